"""``viq push`` — upload a finished training run's model to the Hugging Face Hub (docs/design.md
C32; the logic is `viq.train.card`).

    viq push runs/s22 my-org/viq-tiny --dry-run       # prepare runs/s22/push/ and list it
    viq push runs/s22 my-org/viq-tiny --private       # create the repository, upload
    viq push runs/s22 my-org/viq-tiny --revision exp1 # onto a branch (created when missing)

The folder uploaded is prepared in ``RUN/push/``: ``final/``'s model (``config.json``,
``model.safetensors``), its model card ``README.md``, ``train_config.json`` and
``weights.safetensors``; no checkpoints, optimizer or RNG state.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from viq.cli.errors import UsageError

EPILOG = """\
the token: `hf auth login` or HF_TOKEN (huggingface_hub's own rules).
exit status: 0 uploaded (or prepared with --dry-run), 1 nothing to upload or the upload
failed (one line saying why), 2 usage error."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq push", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Upload a finished viq train run (its final/ model, card and config) to a "
                    "Hugging Face model repository.")
    p.add_argument("run", type=Path, help="a finished viq train run folder (holds final/)")
    p.add_argument("repo", help="the Hugging Face model repository, org/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="upload onto this branch (created if missing; default main)")
    p.add_argument("--dry-run", action="store_true",
                   help="only prepare RUN/push/ and list what would be uploaded")
    return p


def main(argv: list[str] | None = None) -> int:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    args = build_parser().parse_args(argv)
    try:
        validate_repo_id(args.repo)
    except HFValidationError as e:
        raise UsageError(f"REPO {args.repo!r}: {e}; give org/name") from None
    from viq.train.card import push_folder, stage_upload

    folder = stage_upload(args.run)
    for path in sorted(folder.iterdir()):
        print(f"{path.stat().st_size:>14,}  {path}")
    if args.dry_run:
        print(f"viq push: prepared {folder} (--dry-run: nothing uploaded)", file=sys.stderr)
        return 0
    url = push_folder(folder, args.repo, args.private, args.revision,
                      message=f"viq push {args.run.resolve().name}")
    print(f"viq push: uploaded {folder} to {args.repo}: {url}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
