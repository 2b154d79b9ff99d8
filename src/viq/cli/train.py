"""``viq train`` — run one training stage (also ``python -m viq train``, and under torchrun).

    viq train --preset tiny_stage1 --out-dir runs/s1
    viq train --preset tiny_stage2_1 --out-dir runs/s21 --set stage.init_from=runs/s1
    viq train --out-dir runs/s1 --resume                 # continue a stopped run
    torchrun --standalone --nproc_per_node 2 -m viq train --preset tiny_stage1 \\
        --out-dir runs/ddp --set run.dist=ddp

The run's resolved config is written to ``OUT/config.json``; ``--resume`` reads it back (a
``--preset`` given with ``--resume`` must agree). See `viq.train.loop` for what a run writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
outputs (in --out-dir):
  config.json          the resolved TrainConfig (every field; --set overrides applied)
  metrics.jsonl        one JSON object per logged step (loss terms, lr, grad_norm, tokens/s,
                       code usage / perplexity with FSQ) and per validation
  tensorboard/         the same scalars as TensorBoard events
  checkpoints/step_N/  weights / optimizer / RNG (safetensors) + state.json; the newest kept
  final/               config.json + model.safetensors (viq encode --checkpoint OUT/final),
                       weights.safetensors (the next stage's --set stage.init_from=OUT) and
                       README.md (the model card; viq push uploads this folder)
  bad_samples.jsonl    samples skipped by the bad-sample policy, with the reason
  done.json            the finish record, written last (the run's fingerprint and steps)

signals: SIGTERM / SIGINT (Ctrl-C) write a checkpoint and exit 0; rerun with --resume.
exit status: 0 done or stopped cleanly, 1 the run failed, 2 usage or config error.
"""


def build_parser() -> argparse.ArgumentParser:
    from viq.presets import RUNS

    p = argparse.ArgumentParser(prog="viq train", description="Train one ViQ stage.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"training preset: {', '.join(RUNS)}")
    p.add_argument("--config", type=Path, help="a config.json written by an earlier run")
    p.add_argument("--out-dir", type=Path, help="run folder (required unless --dry-run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, type-checked, repeatable (e.g. "
                        "--set run.steps=200 --set stage.init_from=runs/s1)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its newest checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="build on the meta device and print parameter counts and memory "
                        "estimates; needs no weights and trains nothing")
    p.add_argument("--world", type=int, help="--dry-run: ranks FSDP2 shards over (default 8)")
    p.add_argument("--tokens", type=int,
                   help="--dry-run: LLM tokens per GPU micro-batch (default max_tokens × rows)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    return p


def resolve_config(args: argparse.Namespace):
    """The run's config from --config / --preset / the run folder (on --resume), + --set."""
    from viq.config import load_json, override
    from viq.presets import get_run
    from viq.train.config import TrainConfig

    saved = args.out_dir / "config.json" if args.out_dir is not None else None
    if args.config is not None:
        cfg = load_json(TrainConfig, args.config)
    elif args.preset:
        cfg = get_run(args.preset)
    elif args.resume and saved is not None and saved.is_file():
        cfg = load_json(TrainConfig, saved)
    else:
        raise ValueError("give --preset NAME or --config FILE (or --resume a run folder that "
                         "holds config.json)")
    return override(cfg, args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"viq train: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        from viq.train.dryrun import dry_run

        try:
            print(dry_run(cfg, tokens=args.tokens, world=args.world))
        except (ValueError, FileNotFoundError) as e:
            print(f"viq train: {e}", file=sys.stderr)
            return 2
        return 0
    if args.out_dir is None:
        print("viq train: --out-dir is required (except with --dry-run)", file=sys.stderr)
        return 2
    from viq.train import dist
    from viq.train.loop import train

    if args.quiet:
        from viq.backends.llm import quiet_loading

        quiet_loading()
    try:
        result = train(cfg, args.out_dir, resume=args.resume, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        print(f"viq train: {e}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown(dist.DistInfo())
    if not result.is_main:
        return 0
    last = result.last
    loss = last.get("loss")
    print(f"viq train: {cfg.stage.name} step {result.step}/{cfg.run.steps}"
          + (f", loss {loss:.4f}" if isinstance(loss, float) else "")
          + (f", {result.bad_samples} bad samples skipped (bad_samples.jsonl)"
             if result.bad_samples else "")
          + (", stopped (resume with --resume)" if result.stopped else "")
          + f" -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
