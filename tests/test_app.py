"""``viq app`` in a real browser (docs/app.md, docs/design.md C35): the command serves the page of a
tiny trained demo-like folder (stage 1, stage 2-2 with its LLM and latent head, a code decoder);
Debian's Chromium, driven by Playwright, uploads an image, reads the code map, the
reconstructions, the storage and the answers, and every number is checked against ``viq encode``,
``viq eval --recon`` and `predict` run directly; a corrupt file and a 1×100000 strip give a message
and the server keeps serving; nothing is written outside the app's temporary folder."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from viq.cli.main import main
from viq.codes.codesfile import load_codes
from viq.config import override
from viq.data.bundled import bundled_photo
from viq.presets import get_run
from viq.train.loop import train

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
QUESTION = "What colour is the square?"


def test_without_a_model_or_a_demo_folder_it_says_which_command_makes_one(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["app"]) == 2
    err = capsys.readouterr().err
    assert "no demo folder at ./viq_demo_out" in err and "viq demo --quick" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A demo-like folder of tiny runs: what `viq app --run` reads from `viq demo`'s output."""
    root = tmp_path_factory.mktemp("app_demo")
    common = ["run.tensorboard=false", "data.synth_n=24", "run.val_batches=0"]
    train(override(get_run("tiny_stage1"), ["run.steps=2", *common]), root / "stage1",
          progress=False)
    train(override(get_run("tiny_stage2_2"), ["run.steps=2", *common]), root / "stage2_2",
          progress=False)
    train(override(get_run("tiny_decoder"), [f"stage.init_from={root / 'stage2_2'}",
                                             "run.steps=4", "run.checkpoint_every=4", *common]),
          root / "decoder", progress=False)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_served(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"viq app exited with {proc.returncode}: "
                                 f"{proc.stderr.read().decode(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"viq app did not serve {url} within {timeout:.0f} s")


@pytest.fixture
def server(tiny_demo, tmp_path):
    """``viq app --run`` on a free localhost port; its cwd and TMPDIR are fresh folders, so what
    it writes outside its temporary folder would show."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "viq", "app", "--run", str(tiny_demo),
                             "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_served(url, proc)
        yield url, proc, cwd, tmp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _direct(tiny_demo: Path, image: Path, out: Path) -> dict:
    """What the commands give for ``image``: its codes (viq encode with the stage-2-2 model, at the
    model's rule and at a budget of 8,192 px) and PSNR / SSIM of each drawing path (viq eval)."""
    ckpt = str(tiny_demo / "stage2_2" / "final")
    assert main(["encode", str(image), "--checkpoint", ckpt, "-o", str(out / "codes")]) == 0
    assert main(["encode", str(image), "--checkpoint", ckpt, "-o", str(out / "small"),
                 "--set", "image.max_pixels=8192"]) == 0
    name = image.name + ".codes.safetensors"
    res = {"codes": load_codes(out / "codes" / name), "small": load_codes(out / "small" / name)}
    for label, run in (("latent head (stage 2-2)", "stage2_2"), ("code decoder", "decoder")):
        js = out / f"{run}.json"
        assert main(["eval", "--run", str(tiny_demo / run), "--recon", str(image),
                     "--out", str(js), "--quiet"]) == 0
        res[label] = json.loads(js.read_text())["reconstruction"]["per_image"][0]
    return res


def _answers(tiny_demo: Path, image: Path, codes) -> dict[str, str]:
    """The three answers as the demo's evaluation computes them (`predict`'s modes)."""
    from viq.data.llava import ImageRef, Message, Sample
    from viq.eval.understanding import load_run, predict

    s = Sample("q", "test", (Message("user", f"<image>\n{QUESTION}"),), (ImageRef(str(image)),))
    s22, s1 = load_run(tiny_demo / "stage2_2"), load_run(tiny_demo / "stage1")
    kw = {"max_new_tokens": 16}
    return {"from the codes (quantized)": predict(s22, [s], "codes", codes={"q": [codes]},
                                                  **kw)["q"],
            "continuous (stage 1)": predict(s1, [s], "images", **kw)["q"],
            "blind: no image (quantized)": predict(s22, [s], "blind", **kw)["q"]}


def _table(page, selector: str) -> dict[str, list[str]]:
    rows = page.locator(f"{selector} table tbody tr")
    out = {}
    for i in range(rows.count()):
        cells = [c.strip() for c in rows.nth(i).locator("td").all_inner_texts()]
        out[cells[0]] = cells[1:]
    return out


def _upload(page, path: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(path))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed at "
                    "/usr/bin/chromium (.ci/run installs it: apt-get install -y chromium)")
def test_the_page_shows_what_the_commands_compute_and_survives_bad_uploads(
        server, tiny_demo, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, proc, cwd, tmp = server
    image = tmp_path / "cat.png"
    Image.open(bundled_photo()).save(image)
    direct = _direct(tiny_demo, image, tmp_path / "direct")
    codes = direct["codes"].codes.codes  # (h, w, 4)
    h, w = codes.shape[:2]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
        page.set_default_timeout(120_000)
        page.goto(url)
        _upload(page, image)
        expect(page.locator("#recon table")).to_be_visible()
        expect(page.locator("#codemap img")).to_be_visible()

        # the codes: counts, the downloaded codes file, and one patch clicked on the code map
        stats = page.locator("#stats").inner_text()
        assert f"{h} × {w} patches" in stats and f"{h * w * 4:,} codes" in stats
        link = page.locator("#downloads a[download$='.codes.safetensors']")
        with page.expect_download() as dl:
            link.click()
        dl.value.save_as(tmp_path / "page.codes.safetensors")
        page_codes = load_codes(tmp_path / "page.codes.safetensors")
        assert page_codes.codes.codes.equal(codes)
        assert page_codes.image_size == direct["codes"].image_size
        row, col = h - 1, w // 2
        img = page.locator("#codemap img")
        box, nat = img.bounding_box(), img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
        scale = min(box["width"] / nat[0], box["height"] / nat[1], 1)  # drawn centred, never up
        x0, y0 = (box["width"] - nat[0] * scale) / 2, (box["height"] - nat[1] * scale) / 2
        img.click(position={"x": x0 + (col + 0.5) / w * nat[0] * scale,
                            "y": y0 + (row + 0.5) / h * nat[1] * scale})
        want = ", ".join(str(int(c)) for c in codes[row, col])
        expect(page.locator("#patch textarea")).to_have_value(
            f"patch (row {row}, column {col}): codes {want}")

        # PSNR / SSIM of every drawing path, as viq eval --recon gives them
        recon = _table(page, "#recon")
        assert set(recon) == {"latent head (stage 2-2)", "code decoder"}
        for label, (psnr, ssim) in recon.items():
            want = direct[label]
            assert (psnr, ssim) == (f"{want['psnr']:.2f} dB", f"{want['ssim']:.3f}")
        storage = _table(page, "#storage")
        assert storage["uint16 codes"][0] == f"{2 * h * w * 4:,}"
        assert page.locator("#gallery img").count() == 5  # the image + 2 × (drawing, error map)

        # the resolution control: a smaller budget, fewer codes, as viq encode --set gives them
        small = direct["small"].codes.grid
        assert small != (h, w)
        page.locator("#maxpx input").fill("8192")
        page.locator("#maxpx input").press("Enter")
        expect(page.locator("#stats")).to_contain_text(f"{small[0]} × {small[1]} patches")
        page.locator("#maxpx input").fill("0")
        page.locator("#maxpx input").press("Enter")
        expect(page.locator("#stats")).to_contain_text(f"{h} × {w} patches")

        # a question: the three answers of the demo's evaluation
        page.locator("#question textarea").fill(QUESTION)
        page.locator("#ask").click()
        expect(page.locator("#answers table")).to_be_visible()
        got = {k: v[0] for k, v in _table(page, "#answers").items()}
        want_answers = {k: v or "(empty answer)"
                        for k, v in _answers(tiny_demo, image, direct["codes"].codes).items()}
        assert got == want_answers

        # bad uploads: a message on the page, the server goes on
        corrupt = tmp_path / "corrupt.png"
        corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
        _upload(page, corrupt)
        expect(page.locator("#status")).to_contain_text("Could not use corrupt.png")
        strip = tmp_path / "strip.png"
        Image.new("RGB", (1, 100_000), (200, 30, 30)).save(strip)
        _upload(page, strip)
        expect(page.locator("#status")).to_contain_text("Could not use strip.png")
        expect(page.locator("#status")).to_contain_text("stretched")
        assert proc.poll() is None
        _upload(page, image)
        expect(page.locator("#status")).to_contain_text(f"{h * w * 4:,} codes")
        browser.close()

    assert proc.poll() is None
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert list(cwd.iterdir()) == []  # nothing written beside it
    assert list(tmp.iterdir()) == []  # its temporary folder removed at exit
    assert re.search(r"Traceback", proc.stderr.read().decode(errors="replace")) is None
