"""``viq codes`` — code stores and codes files: verify, pack, unpack, stats (docs/codes.md).

    viq codes verify store/
    viq codes pack codes/ -o packed/            # .codes.safetensors -> .viqz (entropy-packed)
    viq codes pack store/ -o store-packed/      # a whole store, codes column packed
    viq codes unpack packed/ -o codes/          # back, bit-exact
    viq codes stats store/                      # bits per code of each packing method

Packing is lossless (`viq.codes.pack`: an adaptive context model over the FSQ digits coded with
constriction's range coder, or zstd; ``auto`` keeps the smaller per image).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from viq.cli.errors import UsageError, command

RGB_BITS_PER_CODE = 16 * 16 * 3 * 8 / 4  # raw RGB bits per code: a 16-px patch holds 4 codes


def build_parser() -> argparse.ArgumentParser:
    from viq.codes.pack import METHODS

    p = argparse.ArgumentParser(prog="viq codes", description="Code stores and codes files.")
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("verify", help="re-read a store; name damaged or missing shards (exit 1)")
    v.add_argument("store", type=Path)
    for name, what in (("pack", "codes files or a store -> packed (.viqz files / packed store)"),
                       ("unpack", ".viqz files or a packed store -> codes files / store")):
        q = sub.add_parser(name, help=what)
        q.add_argument("inputs", nargs="+", help="files, folders, glob patterns, or one store")
        q.add_argument("-o", "--out", required=True, type=Path, help="output folder")
        if name == "pack":
            q.add_argument("--method", choices=METHODS, default="auto",
                           help="auto (smallest per image, default), fsq, zstd or raw")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("stats", help="bits per code of every packing method")
    s.add_argument("inputs", nargs="+", help="codes files, .viqz files, folders or a store")
    s.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    return p


def _is_store(inputs: list[str]) -> Path | None:
    from viq.codes.store import METADATA

    if len(inputs) == 1 and (Path(inputs[0]) / METADATA).is_file():
        return Path(inputs[0])
    return None


def _verify(args) -> int:
    from viq.codes.verify import verify_store

    r = verify_store(args.store)
    for line in r.problems:
        print(f"  problem: {line}", file=sys.stderr)
    state = "OK" if r.ok else f"{len(r.problems)} problem(s)"
    print(f"viq codes verify: {args.store}: {r.shards} shard(s), {r.rows} rows re-read; {state}"
          + (f"; damaged shard(s) {r.damaged}" if r.damaged else "")
          + (f"; missing shard(s) {r.missing}" if r.missing else ""))
    print(json.dumps({"store": str(args.store), "ok": r.ok, "shards": r.shards, "rows": r.rows,
                      "damaged": r.damaged, "missing": r.missing}))
    return 0 if r.ok else 1


def _line(prog: str, codes: int, nbytes: int) -> str:
    bits = 8.0 * nbytes / codes if codes else 0.0
    ratio = 16.0 / bits if bits else 0.0
    return (f"{prog}: {codes:,} codes, {bits:.3f} bits/code ({ratio:.2f}x smaller than uint16, "
            f"{RGB_BITS_PER_CODE / bits if bits else 0:.0f}x smaller than raw RGB)")


def _files(args, pack: bool) -> int:
    from tqdm import tqdm

    from viq.cli.inputs import expand_inputs, report
    from viq.codes.codesfile import SUFFIX, load_codes, save_codes
    from viq.codes.packfile import SUFFIX as PSUF
    from viq.codes.packfile import load_packed, save_packed

    src, dst = (SUFFIX, PSUF) if pack else (PSUF, SUFFIX)
    prog = f"viq codes {'pack' if pack else 'unpack'}"
    found = expand_inputs(args.inputs, args.out, wanted=lambda f: f.name.endswith(src),
                          kind=f"{src} files", prog=prog,
                          out_name=lambda n: (n[:-len(src)] if n.endswith(src) else n) + dst)
    failures, written, codes, nbytes = list(found.failed), 0, 0, 0
    for job in tqdm(found.jobs, desc=prog, unit="file", disable=args.quiet):
        try:
            if pack:
                cf = load_codes(job.source)
                _, blob = save_packed(job.out, cf, args.method)
                codes += cf.codes.codes.numel()
                nbytes += len(blob)
            else:
                cf = load_packed(job.source)
                save_codes(job.out, cf.codes, source=cf.source, image_size=cf.image_size,
                           original_size=cf.original_size, model_id=cf.model_id)
        except (ValueError, OSError) as e:
            failures.append(f"{job.source}: {e}")
            continue
        written += 1
    if pack and codes:
        print(_line(prog, codes, nbytes))
    return report(prog, written, 0, failures, args.out, skipped=found.skipped)


def _store(args, store: Path, pack: bool) -> int:
    from viq.codes.store import StoreError
    from viq.codes.storepack import convert_store

    prog = f"viq codes {'pack' if pack else 'unpack'}"
    try:
        t = convert_store(store, args.out, pack=pack, method=getattr(args, "method", "auto"))
    except StoreError as e:
        raise UsageError(str(e), prog=prog) from None
    print(_line(prog, t.codes, t.bytes_out if pack else t.bytes_in)
          + (f"; methods {dict(t.methods)}" if pack else "") + f" -> {args.out}")
    return 0


def iter_codes(inputs: list[str]):
    """(levels, (h, w, S) numpy codes) of every image in codes files, .viqz files or a store."""
    from viq.cli.inputs import expand_inputs
    from viq.codes.codesfile import SUFFIX, load_codes
    from viq.codes.packfile import SUFFIX as PSUF
    from viq.codes.packfile import load_packed
    from viq.codes.store import CodeStore

    store = _is_store(inputs)
    if store is not None:
        for row in CodeStore(store):
            if row.num_images:
                yield row.levels, row.codes.numpy()
        return
    found = expand_inputs(inputs, Path("."), wanted=lambda f: f.name.endswith((SUFFIX, PSUF)),
                          kind=f"{SUFFIX} / {PSUF} files", prog="viq codes stats",
                          out_name=lambda n: n)
    missing = [str(j.source) for j in found.jobs if not j.source.is_file()]
    if found.failed or missing:
        raise UsageError(f"unusable inputs: {', '.join((found.failed + missing)[:5])}",
                         prog="viq codes stats")
    for job in found.jobs:
        cf = load_packed(job.source) if job.source.name.endswith(PSUF) else load_codes(job.source)
        yield cf.codes.levels, cf.codes.codes.numpy()


def _stats(args) -> int:
    from viq.codes.pack import pack_all

    sizes: dict[str, int] = {}
    codes = images = 0
    for levels, c in iter_codes(args.inputs):
        blobs = pack_all(c, levels)
        for m, b in blobs.items():
            sizes[m] = sizes.get(m, 0) + len(b)
        sizes["auto"] = sizes.get("auto", 0) + min(len(b) for b in blobs.values())
        codes, images = codes + c.size, images + 1
        if args.limit and images >= args.limit:
            break
    if not codes:
        raise UsageError("no codes found in the inputs", prog="viq codes stats")
    print(f"{images} image(s), {codes:,} codes; bits per code (method byte included):")
    print(f"  {'method':<6} {'bits/code':>9} {'vs uint16':>9} {'vs raw RGB':>10}")
    out = {}
    for m in ("raw", "zstd", "fsq", "auto"):
        if m in sizes:
            bits = 8.0 * sizes[m] / codes
            out[m] = round(bits, 4)
            print(f"  {m:<6} {bits:>9.3f} {16 / bits:>8.2f}x {RGB_BITS_PER_CODE / bits:>9.0f}x")
    print(json.dumps({"images": images, "codes": codes, "bits_per_code": out}))
    return 0


@command("viq codes")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "verify":
        return _verify(args)
    if args.action == "stats":
        return _stats(args)
    pack = args.action == "pack"
    store = _is_store(args.inputs)
    return _store(args, store, pack) if store is not None else _files(args, pack)
