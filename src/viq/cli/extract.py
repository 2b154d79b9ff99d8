"""``viq extract`` — a dataset → a code store (docs/codes.md): `viq.codes.extract.extract_store`'s
steps, with its flags' usage errors.

Try it with no downloads:

    viq extract photos/ --out store/ --preset tiny --random-init --num-shards 2

Many workers: ``--num-shards N --shard-index I`` on each machine, or ``torchrun --nproc-per-node P
-m viq extract ...`` (rank r writes the shards k with k mod WORLD_SIZE = r; RANK and WORLD_SIZE
are the only environment read). Rerunning the same command resumes: finished shards (file and
commit record with matching sha256) are skipped, a partial one is redone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from viq.cli.errors import UsageError, check_range, command
from viq.cli.model_args import (
    add_compile_arg,
    add_model_args,
    add_packed_arg,
    image_config,
    load_model,
    parse_model_args,
)

EPILOG = """\
DATA:
  a LLaVA .json/.jsonl file (images relative to it or --image-root), a .tar file or a folder of
  .tar shards (viq data shards, or webdataset/img2dataset: <key>.jpg + <key>.txt/.json, no index
  needed), a Hugging Face dataset: a datasets.save_to_disk folder (state.json +
  dataset_info.json), a .parquet file or a folder of them (an Image column, {bytes, path}, or a
  binary/path column named image, jpg, ...; paths relative to it or --image-root), an imagefolder
  with metadata.jsonl (file_name + text columns); or an image folder (searched recursively,
  without metadata.jsonl) or one image file. Dataset rows: id = the id column or the row index,
  text = the other columns as JSON (see docs/codes.md).

STORE (Parquet, readable without viq: pandas, DuckDB, or datasets.load_dataset("parquet",
data_files="STORE/data/*.parquet"); schema in docs/codes.md):
  STORE/metadata.json, STORE/data/shard-KKKKK-of-NNNNN.parquet (one row per image: sample_id,
  source, image_index, num_images, h, w, levels, codes = h*w*4 uint16 little-endian, image_size,
  original_size, text), STORE/shards/*.json (commit records with sha256), *.bad.jsonl.

sharding and resuming:
  Shard k of N takes units [k*U/N, (k+1)*U/N) of the input (records, dataset rows, files or tar
  files).
  --num-shards defaults to the store's, else one per input tar, else one per 10,000 samples
  (records, rows or image files).
  A store never mixes models or settings: a run whose fingerprint (model weights sha256, config,
  image settings, input, shard count) differs from the store's is refused.

exit status: 0 done (bad samples are recorded in the store and counted), 1 a failure, 2 usage.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viq extract", description="Extract a dataset's ViQ codes into a code store.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="LLaVA json/jsonl, tar shard(s), a Hugging Face "
                   "dataset (save_to_disk, Parquet, imagefolder) or an image folder")
    p.add_argument("--out", required=True, type=Path, help="the code store (a folder)")
    add_model_args(p)
    add_packed_arg(p)
    add_compile_arg(p)
    p.add_argument("--image-root", type=Path,
                   help="folder LLaVA (and Parquet / save_to_disk) image paths are relative to")
    p.add_argument("--num-shards", type=int, help="output shards in all (see below)")
    p.add_argument("--shard-index", type=int, help="write only this shard (0-based)")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="patch budget per batch (default 16384; a larger sample runs alone)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-loading processes ahead of the model (0: load in this process; "
                        "at most 64; default: up to 8 with a GPU, on a CPU none up to 4 cores, "
                        "else a quarter of them); viq bench extract measures the count to use")
    p.add_argument("--bad-samples", choices=("skip", "fail"), default="skip",
                   help="skip (record and go on, default) or fail at the first bad sample")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) of a torchrun launch (`viq.train.dist`: the only environment read)."""
    from viq.train.dist import launched_rank

    try:
        return launched_rank()
    except ValueError as e:
        raise UsageError(f"{e} (RANK / WORLD_SIZE are set by torchrun)") from None


def _num_shards(args: argparse.Namespace, source) -> int:
    from viq.codes.extract import default_num_shards

    if args.num_shards is not None:
        if args.num_shards < 1:
            raise UsageError("--num-shards must be at least 1")
        return args.num_shards
    return default_num_shards(args.out, source)


def my_shards(args: argparse.Namespace, n: int) -> list[int]:
    if args.shard_index is not None:
        if not 0 <= args.shard_index < n:
            raise UsageError(f"--shard-index {args.shard_index} is outside 0..{n - 1} "
                             f"(--num-shards {n})")
        return [args.shard_index]
    rank, world = torchrun_rank()
    return [k for k in range(n) if k % world == rank]


def run(args: argparse.Namespace) -> int:
    from viq.codes.extract import (
        MAX_BATCH_TOKENS,
        MAX_WORKERS,
        ExtractSettings,
        store_metadata,
        write_shards,
    )
    from viq.codes.store import StoreError
    from viq.codes.storewrite import open_store
    from viq.data.sources import open_extract_source

    check_range(args.max_tokens, 1, MAX_BATCH_TOKENS, "--max-tokens")
    if args.workers is not None:
        check_range(args.workers, 0, MAX_WORKERS, "--workers")
    try:
        source = open_extract_source(args.data, args.image_root)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"DATA {args.data}: {e}") from None
    n = _num_shards(args, source)
    mine = my_shards(args, n)
    built = load_model(args)
    settings = ExtractSettings(image_config(built.model, args), args.center_crop,
                               args.max_tokens, args.workers, args.bad_samples, args.packed)
    base = store_metadata(built, source, settings, n)
    try:
        open_store(args.out, base)
    except StoreError as e:
        raise UsageError(str(e)) from None
    stats = write_shards(built.model, source, args.out, settings, base, mine,
                         progress=not args.quiet)
    meta = stats.store
    c = meta["counts"]
    print(f"viq extract: {stats.line()}")
    print(f"viq extract: store {args.out}: {c['shards_done']}/{n} shards finished, {c['rows']} "
          f"rows, {c['bad']} bad samples {c['bad_reasons'] or ''}".rstrip()
          + ("" if meta["complete"] else "; rerun to resume / run the other shards"))
    if c["bad"]:
        print(f"viq extract: bad samples are listed in {args.out}/shards/*.bad.jsonl",
              file=sys.stderr)
    return 0


@command("viq extract")
def main(argv: list[str] | None = None) -> int:
    return run(parse_model_args(build_parser(), argv))
