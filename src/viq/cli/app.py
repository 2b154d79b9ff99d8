"""``viq app`` — a page in the browser: an image's codes, their map, the reconstructions by every
drawing path, storage, and what the LLM answers from the codes (docs/app.md, docs/design.md C35).

    viq app                              # the demo's folder (viq_demo_out/), http://127.0.0.1:7860
    viq app --run D --port 8000          # a demo folder or one viq train run
    viq app --weights XuminYu/ViQ_weights --size 16k    # published weights: codes + their drawer
    viq app --checkpoint CKPT            # codes only

The page is `viq.app.page` (Gradio, an optional extra: ``pip install -e '.[app]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from viq.cli.errors import UsageError, check_range, command

DEFAULT_PORT = 7860  # Gradio's
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

EPILOG = """\
model (at most one; none = the demo's folder ./viq_demo_out when there is one):
  --run DIR          a `viq demo` folder (codes and answers from stage 2-2, its latent head, the
                     code decoder, the continuous answers of stage 1) or one `viq train` run with
                     an FSQ head (what it has: its LLM, its latent head or code decoder)
  --weights PATH     published ViQ weights (a folder or a Hugging Face name, with --size):
                     codes and the release's drawer; no LLM
  --checkpoint DIR   a viq checkpoint: codes only

the page:
  Upload an image (or choose the bundled photo or a test-split example): the image, the code map
  (click a patch for its four codes), the number of codes and LLM tokens, this image's code usage;
  the resize rule and max pixels change all of it; a reconstruction by every drawing path with an
  error heat map, PSNR and SSIM (as viq eval --recon); raw / uint16 / entropy-packed bytes and the
  .codes.safetensors and .viqz files to download; a question answered from the codes, by the
  continuous model and blind. Uploads are bounded like dataset images (bytes, pixels from the
  header, the per-image pixel budget); a bad file gets a message on the page. One request is
  served at a time. All files live in one temporary folder, removed when the app stops.

exit status: 0 stopped (Ctrl-C), 1 the models could not be loaded, 2 usage error.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq app", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A page in the browser to look at an image's codes, its reconstructions "
                    "and what an LLM answers from them (Gradio; pip install -e '.[app]').")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, help="a viq demo folder or a viq train run folder")
    src.add_argument("--weights", type=Path, help="published ViQ weights (folder or name)")
    src.add_argument("--checkpoint", type=Path, help="a viq checkpoint folder (codes only)")
    p.add_argument("--size", help="FSQ size of --weights (2k, 4k, 8k, 16k, 64k)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--device", default="cpu", help="torch device of the models (default cpu)")
    return p


def _models_fn(args: argparse.Namespace):
    from viq.app import models as m

    device = str(args.device)
    if args.weights is not None:
        return lambda: m.load_weights_models(args.weights, args.size)
    if args.checkpoint is not None:
        return lambda: m.load_checkpoint_models(args.checkpoint)
    return lambda: m.load_run_models(args.run, device)


@command("viq app")
def main(argv: list[str] | None = None) -> int:
    from viq.app.models import DEMO_DIR, is_demo
    from viq.cli.errors import check_device

    args = build_parser().parse_args(argv)
    check_range(args.port, 0, 65535, "--port")
    args.device = check_device(args.device)
    if args.size and args.weights is None:
        raise UsageError("--size goes with --weights")
    if args.run is None and args.weights is None and args.checkpoint is None:
        if not is_demo(DEMO_DIR):
            raise UsageError(f"no model given and no demo folder at ./{DEMO_DIR}; make one with "
                             "'viq demo --quick' (about 4 min on 2 cores; 'viq demo' for the "
                             "full one), or give --run DIR, --weights PATH or --checkpoint DIR")
        args.run = DEMO_DIR
    from viq.app.page import check_gradio, serve
    from viq.data.shards import MAX_MEMBER_BYTES

    check_gradio()  # the missing extra is one line before any model is loaded
    if args.host not in LOCAL_HOSTS:
        print(f"viq app: listening on {args.host}: the page is reachable from other machines",
              file=sys.stderr)
    print("viq app: loading the models …", file=sys.stderr, flush=True)

    def ready(url: str) -> None:
        print(f"viq app: serving on {url} (Ctrl-C stops)", file=sys.stderr, flush=True)

    try:
        serve(_models_fn(args), args.host, args.port, MAX_MEMBER_BYTES, ready)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
