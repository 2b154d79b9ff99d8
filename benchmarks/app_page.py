"""Times ``viq app`` and takes the screenshot of docs/app.md, in Debian's Chromium (Playwright).

    python benchmarks/app_page.py --run viq_demo_out --screenshot docs/images/app.png

Start-up: from starting ``viq app`` to the page being served (models loaded). Upload →
reconstruction: from handing the file to the page to its reconstruction table being shown, for
the bundled photo (the first request) and for a test-split image (the next). Question: from the
click to the three answers. Prints one JSON line. Needs the app extra and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a viq demo folder (or run)")
    p.add_argument("--screenshot", type=Path, help="write the page's screenshot here (PNG)")
    args = p.parse_args()
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from viq.data.bundled import bundled_photo

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    tmp = Path(tempfile.mkdtemp())
    photo = tmp / "chelsea.png"
    Image.open(bundled_photo()).save(photo)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "viq", "app", "--run", args.run, "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out: dict = {}
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"viq app exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                time.sleep(0.2)
        out["startup_s"] = time.perf_counter() - t0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(300_000)
            t = time.perf_counter()
            page.goto(url)
            expect(page.locator("#upload")).to_be_visible()
            out["page_load_s"] = time.perf_counter() - t
            with page.expect_file_chooser() as chooser:
                page.locator("#upload").click()
            t = time.perf_counter()
            chooser.value.set_files(str(photo))
            expect(page.locator("#status")).to_contain_text("chelsea.png")
            expect(page.locator("#recon")).not_to_be_empty()
            out["upload_to_reconstruction_first_s"] = time.perf_counter() - t
            options = page.locator("#example")
            options.click()
            choice = page.get_by_role("option").nth(1)
            name = choice.inner_text()
            t = time.perf_counter()
            choice.click()
            expect(page.locator("#status")).to_contain_text(name.split(": ")[-1])
            out["example_to_reconstruction_s"] = time.perf_counter() - t
            t = time.perf_counter()
            page.locator("#ask").click()
            expect(page.locator("#answers table")).to_be_visible()
            out["question_to_answers_s"] = time.perf_counter() - t
            out["recon"] = page.locator("#recon").inner_text()
            out["answers"] = page.locator("#answers").inner_text()
            if args.screenshot:
                page.screenshot(path=str(args.screenshot), full_page=True)
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
