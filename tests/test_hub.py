"""Hugging Face names (docs/design.md C31, `viq.hub`). A real Hugging Face cache on disk holds a
tiny release repository (two sizes) and a viq checkpoint repository (two revisions); offline, a
name encodes like the same files as a folder, only the chosen size is read, ``@revision`` selects,
every failure is one line. A loopback server speaking the Hub's API shows the online path: only
the chosen size is downloaded; the Hub's refusals are one line each."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from viq.cli.model_args import random_model
from viq.codes.codesfile import load_codes
from viq.data.bundled import bundled_photo
from viq.hub import HubError, parse_name, resolve
from viq.model.release import export_release

constants = pytest.importorskip("huggingface_hub.constants")
LEVELS = {"16k": "8,8,8,6,5", "64k": "8,8,8,5,5,5"}
REPO, ONE, CKPT, RUN = "viq-test/weights", "viq-test/weights-16k", "viq-test/ckpt", "viq-test/run"
VAE = {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 2, 1, 2], "num_res_blocks": 1,
       "temperal_downsample": [False, True, False]}  # a tiny Qwen-Image VAE


def _files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_repo(cache: Path, repo: str, files: dict[str, bytes], ref: str = "main") -> str:
    """Write ``files`` into ``cache`` as huggingface_hub stores a download: blobs named by their
    hash, the snapshot's files linking to them, ``refs/<ref>`` naming the commit."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(json.dumps(sorted((k, _sha(v)) for k, v in files.items())).encode()
                          + ref.encode()).hexdigest()
    for rel, data in files.items():
        blob = storage / "blobs" / _sha(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The same files as folders: a release download (two sizes) and two checkpoints."""
    root = tmp_path_factory.mktemp("local")
    for size, levels in LEVELS.items():
        export_release(random_model("tiny", 0, [f"head.levels={levels}"]),
                       root / "ViQ_weights" / f"converted_{size}")
    random_model("tiny", 0).save_pretrained(root / "ckpt_main")
    random_model("tiny", 1).save_pretrained(root / "ckpt_v2")
    return root


@pytest.fixture(scope="module")
def cache(local, tmp_path_factory):
    """The Hugging Face cache: both sizes of REPO, only 16k of ONE, CKPT at main and v2 (a
    second one whose model.safetensors was never downloaded: ``incomplete``), a run's final/."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    weights = local / "ViQ_weights"
    cache_repo(cache, REPO, _files(weights))
    cache_repo(cache, ONE, _files(weights / "converted_16k", "converted_16k/"))
    cache_repo(cache, CKPT, _files(local / "ckpt_main"))
    commit = cache_repo(cache, CKPT, _files(local / "ckpt_v2"), ref="v2")
    cache_repo(cache, "viq-test/incomplete", {"config.json": (local / "ckpt_main" /
                                                              "config.json").read_bytes()})
    cache_repo(cache, RUN, {"final/weights.safetensors": b"w", "final/train_config.json": b"{}"})
    return {"path": cache, "v2": commit}


@pytest.fixture
def offline(cache, monkeypatch):
    """``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` for this test: set in the environment (for child
    processes) and in huggingface_hub's constants, which it read from them at import."""
    for var, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(cache["path"]))):
        monkeypatch.setenv(var, "1" if value is True else value)
        monkeypatch.setattr(constants, var, value)
    return cache


def _encode(tmp_path, *flags):
    from viq.cli.encode import main

    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    rc = main([str(bundled_photo()), "-o", str(out), "--quiet", *map(str, flags)])
    files = list(out.glob("*.codes.safetensors")) if out.is_dir() else []
    return rc, (load_codes(files[0]) if files else None)


def test_names_parse():
    assert str(parse_name("XuminYu/ViQ_weights")) == "XuminYu/ViQ_weights"
    n = parse_name("Qwen/Qwen-Image/vae@refs/pr/1")
    assert (n.repo, n.sub, n.revision) == ("Qwen/Qwen-Image", "vae", "refs/pr/1")
    for path in ("/abs/a/b", "./a/b", "~/a/b", "one", "a/../b", "a--b/c", "a/b@", "a\\b/c"):
        assert parse_name(path) is None, path


def test_weights_name_encodes_like_the_folder_and_reads_only_its_size(offline, local, tmp_path):
    folder = _encode(tmp_path, "--weights", local / "ViQ_weights", "--size", "16k")[1]
    opened, hook_on = [], [True]
    sys.addaudithook(lambda ev, args: hook_on[0] and ev == "open" and isinstance(args[0], str)
                     and opened.append(args[0]))
    try:
        rc, named = _encode(tmp_path, "--weights", REPO, "--size", "16k")
    finally:
        hook_on[0] = False
    assert rc == 0 and torch.equal(named.codes.codes, folder.codes.codes)
    assert named.codes.levels == (8, 8, 8, 6, 5)
    assert named.model_id.startswith("release:16k:") and str(offline["path"]) in named.model_id
    read = [p for p in opened if "models--viq-test--weights" in p]
    assert any("converted_16k/model_viq_fsq_16k.pth" in p for p in read)
    assert not any("converted_64k" in p for p in read)  # the other size is never opened


def test_only_the_chosen_size_needs_to_be_cached(offline, local, tmp_path, capsys):
    rc, named = _encode(tmp_path, "--weights", ONE, "--size", "16k")
    _, folder = _encode(tmp_path, "--weights", local / "ViQ_weights" / "converted_16k")
    assert rc == 0 and torch.equal(named.codes.codes, folder.codes.codes)
    rc, sub = _encode(tmp_path, "--weights", f"{REPO}/converted_64k")  # a sub-folder names it
    _, folder64 = _encode(tmp_path, "--weights", local / "ViQ_weights" / "converted_64k")
    assert rc == 0 and torch.equal(sub.codes.codes, folder64.codes.codes)
    capsys.readouterr()
    assert _encode(tmp_path, "--weights", ONE, "--size", "64k")[0] == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "converted_64k/model_viq_fsq_64k.pth" in err
    assert "cached: sizes 16k" in err and "HF_HUB_OFFLINE" in err and ONE in err


def test_checkpoint_name_and_revision(offline, local, tmp_path):
    _, main_dir = _encode(tmp_path, "--checkpoint", local / "ckpt_main")
    _, v2_dir = _encode(tmp_path, "--checkpoint", local / "ckpt_v2")
    assert not torch.equal(main_dir.codes.codes, v2_dir.codes.codes)
    for name, want in ((CKPT, main_dir), (f"{CKPT}@main", main_dir), (f"{CKPT}@v2", v2_dir),
                       (f"{CKPT}@{offline['v2']}", v2_dir)):
        rc, got = _encode(tmp_path, "--checkpoint", name)
        assert rc == 0 and torch.equal(got.codes.codes, want.codes.codes), name
        assert str(offline["path"]) in got.model_id


def test_a_local_path_wins(offline, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "viq-test").mkdir()
    os.symlink(local / "ckpt_v2", tmp_path / CKPT)  # a folder spelled like the repository
    assert resolve(CKPT, ["*"]) == Path(CKPT)
    assert resolve(f"{CKPT}@v2", ["*"]).parent.name == "snapshots"  # no such folder: the name
    _, v2 = _encode(tmp_path, "--checkpoint", local / "ckpt_v2")
    assert torch.equal(_encode(tmp_path, "--checkpoint", CKPT)[1].codes.codes, v2.codes.codes)


@pytest.mark.parametrize("flags, words", [
    (["--weights", "viq-test/absent", "--size", "16k"],
     ["viq-test/absent", "not in the cache", "HF_HUB_OFFLINE"]),
    (["--weights", REPO], ["model file", "give --size", "cached: sizes 16k, 64k"]),
    (["--weights", REPO, "--size", "2k"], ["size 2k", "converted_2k/", "cached: sizes 16k, 64k"]),
    (["--checkpoint", f"{CKPT}@v9"], ["revision 'v9'", "cached: main, v2", "HF_HUB_OFFLINE"]),
    (["--checkpoint", "viq-test/incomplete"], ["model.safetensors", "not in the Hugging Face "
                                                                    "cache"]),
])
def test_failures_are_one_line(offline, tmp_path, capsys, flags, words):
    assert _encode(tmp_path, *flags)[0] == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("viq encode: error: "), err
    for w in words:
        assert w in err, (w, err)


def test_try_compress_and_extract_take_names(offline, tmp_path, capsys):
    from viq.cli.main import main as viq

    photo = str(bundled_photo())
    for argv in (["try", "--weights", REPO, "--size", "16k", "--out", str(tmp_path / "try")],
                 ["compress", photo, "-o", str(tmp_path / "a.viqz"), "--checkpoint", CKPT],
                 ["extract", photo, "--out", str(tmp_path / "store"), "--weights",
                  f"{REPO}/converted_16k", "--quiet"]):
        assert viq(argv) == 0, (argv, capsys.readouterr().err)


def test_decode_eval_decompress_and_init_from_names(offline, tmp_path, capsys):
    from viq.cli.decode import main as decode
    from viq.cli.decompress import main as decompress
    from viq.cli.eval import main as evaluate
    from viq.eval.drawing import locate_run
    from viq.train.checkpoint import resolve_init

    (codes := tmp_path / "c").mkdir()
    for argv, rc, main in (
            ([str(codes), "-o", str(tmp_path / "png"), "--weights", "viq-test/absent"], 2, decode),
            ([str(codes), "-o", str(tmp_path / "png"), "--run", "viq-test/absent"], 2, decode),
            ([str(tmp_path / "x.viqz"), "-o", str(tmp_path / "x.png"), "--weights",
              "viq-test/absent"], 1, decompress),
            (["--run", "viq-test/absent", "--recon", str(bundled_photo())], 1, evaluate)):
        assert main(argv) == rc, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "viq-test/absent" in err, err
    init = resolve_init(RUN)
    assert init.name == "weights.safetensors" and str(offline["path"]) in str(init)
    cache_repo(offline["path"], "viq-test/pushed", {"weights.safetensors": b"w",
                                                    "train_config.json": b"{}"})
    assert resolve_init("viq-test/pushed").parent.parent.name == "snapshots"
    pushed = locate_run("viq-test/pushed")  # what viq push uploads: final/'s files at the root
    assert {"weights.safetensors", "train_config.json"} <= {p.name for p in pushed.iterdir()}
    with pytest.raises(HubError, match="viq-test/absent"):  # a FileNotFoundError
        resolve_init("viq-test/absent")


@pytest.fixture(scope="module")
def drawer_repo(tmp_path_factory):
    """A release folder with the drawer's tensors (a tiny latent head and Qwen-Image VAE), as a
    folder and as the cached repository DRAW."""
    diffusers = pytest.importorskip("diffusers")
    from viq.model.latent import LatentHead
    from viq.model.release import latent_head_state_dict

    model = random_model("tiny", 0, [f"head.levels={LEVELS['16k']}"])
    torch.manual_seed(1)
    extras = latent_head_state_dict(LatentHead(model.cfg.encoder.width, model.cfg.encoder.heads))
    vae = diffusers.AutoencoderKLQwenImage(**VAE)
    extras.update({"vae_head.vae." + k: v for k, v in vae.state_dict().items()})
    root = tmp_path_factory.mktemp("drawer") / "ViQ_weights"
    export_release(model, root / "converted_16k", extras=extras)
    return root


def test_decode_by_name_draws_like_the_folder(offline, drawer_repo, tmp_path):
    import numpy as np
    from PIL import Image

    from viq.cli.decode import main as decode
    from viq.eval.drawing import load_drawer

    cache_repo(offline["path"], "viq-test/drawer", _files(drawer_repo))
    drawer = load_drawer("viq-test/drawer", "16k")
    assert str(offline["path"]) in str(drawer.sources["weights"])
    _, codes = _encode(tmp_path, "--weights", drawer_repo, "--size", "16k")
    pngs = []
    for weights in (drawer_repo, "viq-test/drawer"):
        out = tmp_path / f"png{len(pngs)}"
        assert decode([str(tmp_path / "out0"), "-o", str(out), "--weights", str(weights),
                       "--size", "16k", "--quiet"]) == 0
        pngs.append(np.array(Image.open(next(out.glob("*.png")))))
    assert codes is not None and np.array_equal(pngs[0], pngs[1])


def test_a_vae_source_by_name_with_its_sub_folder(offline, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from viq.backends.vae import load_vae_folder

    vae = diffusers.AutoencoderKLQwenImage(**VAE)
    vae.save_pretrained(tmp_path / "vae")
    cache_repo(offline["path"], "viq-test/image", _files(tmp_path / "vae", "vae/"))
    got = load_vae_folder("viq-test/image/vae")  # as Qwen/Qwen-Image/vae
    for k, v in vae.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k
    with pytest.raises(HubError, match="viq-test/image: transformer/config.json and .* are not"):
        load_vae_folder("viq-test/image/transformer")


def test_the_environment_alone_selects_the_cache(cache, local, tmp_path):
    """The real contract: only HF_HUB_OFFLINE and HF_HUB_CACHE, in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache["path"])}
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "viq", "encode", str(bundled_photo()), "-o",
                           str(out), "--weights", REPO, "--size", "64k", "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    _, folder = _encode(tmp_path, "--weights", local / "ViQ_weights" / "converted_64k")
    got = load_codes(next(out.glob("*.codes.safetensors")))
    assert torch.equal(got.codes.codes, folder.codes.codes)


# ----------------------------------------------------------------------------------------------
# Online: a local server speaking the Hub's API (loopback only)
# ----------------------------------------------------------------------------------------------


class FakeHub(BaseHTTPRequestHandler):
    """``repos``: ``{repo: {revision: (commit, {path: bytes})}}``; ``gated``: repositories that
    answer GatedRepo; ``log``: every request path."""

    repos: dict = {}
    gated: set = set()
    log: list = []
    log_message = staticmethod(lambda *args: None)  # quiet

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.log.append(path)
        m = (re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/(.+?)(?:/)?", path)
             or re.fullmatch(r"/([^/]+/[^/]+)/(resolve)/([0-9a-f]{40})/(.+)", path))
        if m is None:
            return self._send(404)
        repo, kind, rev = m.group(1), m.group(2), m.group(3)
        if repo in self.gated:
            return self._send(403, b"{}", {"X-Error-Code": "GatedRepo"})
        if repo not in self.repos:
            return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
        by_commit = {c: (c, f) for c, f in self.repos[repo].values()}
        commit, files = self.repos[repo].get(rev) or by_commit.get(rev) or (None, None)
        if commit is None:
            return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"})
        if kind == "revision":
            return self._send(200, json.dumps({"id": repo, "sha": commit}).encode())
        if kind == "tree":
            return self._send(200, json.dumps([{"type": "file", "path": p, "size": len(d), "oid":
                                                _sha(d)[:40]} for p, d in files.items()]).encode())
        data = files[m.group(4)]
        self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{_sha(data)}"'})

    do_GET = do_HEAD = _route


def _endpoint(monkeypatch, url: str) -> None:  # what HF_ENDPOINT=url sets at import
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(local, tmp_path, monkeypatch):
    files = _files(local / "ViQ_weights")
    FakeHub.repos = {REPO: {"main": ("a" * 40, files)}}
    FakeHub.gated, FakeHub.log = {"viq-test/gated"}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _endpoint(monkeypatch, f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield FakeHub
    server.shutdown()
    server.server_close()


def test_online_downloads_only_the_chosen_size(hub, local, tmp_path):
    rc, named = _encode(tmp_path, "--weights", REPO, "--size", "16k")
    _, folder = _encode(tmp_path, "--weights", local / "ViQ_weights" / "converted_16k")
    assert rc == 0 and torch.equal(named.codes.codes, folder.codes.codes)
    fetched = sorted({p.split("/resolve/")[1][41:] for p in hub.log if "/resolve/" in p})
    assert fetched == ["converted_16k/config.json", "converted_16k/model_viq_fsq_16k.pth"]
    snapshot = tmp_path / "hf" / "models--viq-test--weights" / "snapshots" / ("a" * 40)
    assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*.*")) == fetched


@pytest.mark.parametrize("flags, words", [
    (["viq-test/absent", "--size", "16k"],
     ["no Hugging Face repository viq-test/absent", "hf auth login"]),
    (["viq-test/gated", "--size", "16k"],
     ["gated", "https://huggingface.co/viq-test/gated", "hf auth login"]),
    ([f"{REPO}@v9", "--size", "16k"], ["no revision 'v9'"]),
    ([REPO, "--size", "2k"], ["size 2k (converted_2k/", "not in the repository",
                              "it holds sizes 16k, 64k"]),
    ([REPO], ["model file", "not in the repository", "it holds sizes 16k, 64k", "give --size"]),
])
def test_online_refusals_are_one_line(hub, tmp_path, capsys, flags, words):
    assert _encode(tmp_path, "--weights", *flags)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("viq encode: error: "), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert not any("/resolve/" in p for p in hub.log)  # nothing was downloaded


def test_no_network_and_nothing_cached_is_one_line(hub, tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _endpoint(monkeypatch, f"http://127.0.0.1:{port}")
    assert _encode(tmp_path, "--weights", REPO, "--size", "16k")[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not be reached" in err[0] and REPO in err[0], err
