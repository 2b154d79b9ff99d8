"""The Gradio page of ``viq app`` (docs/design.md C35, docs/app.md).

Built for strangers' input: uploads are files (never decoded by Gradio: `viq.data.images` decodes
them under the resource policy, C20), bounded in bytes by the policy's per-image bound; every
handler turns a failure into a message on the page, so one bad file never stops the server; one
queue with one worker (the models are not reentrant); Gradio's files and ours live in one
temporary folder (``GRADIO_TEMP_DIR`` is set to it before Gradio is imported), removed at exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from viq.app.analysis import (
    analyse,
    ask,
    check_upload,
    describe_error,
    fmt_bytes,
    image_rule,
)
from viq.app.models import AppModels
from viq.data.images import pixel_budget

QUEUE_SIZE = 16  # waiting requests at most; more are told to try again
KEEP_RESULTS = 32  # result folders kept (a request's downloads), oldest removed first
PREVIEW_PIXELS = 4_194_304  # an original above this is shown downscaled (the codes are not)
RULES = ("native", "64x32", "128x32", "192x32", "256x32", "384x32", "512x32", "768x32")
GRADIO_MISSING = ("the page needs Gradio, an optional extra; install it with "
                  "pip install -e '.[app]'")


def check_gradio() -> None:
    """The missing extra as one line, without importing Gradio (which reads its temporary folder
    when imported, so `serve` imports it only after choosing that folder)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise RuntimeError(GRADIO_MISSING)


def import_gradio():
    try:
        import gradio
    except ImportError:
        raise RuntimeError(GRADIO_MISSING) from None
    return gradio


def _stats_md(a) -> str:
    (h, w), u = a.grid, a.usage
    (ew, eh), (ow, oh) = a.encoder_image.size, a.original.size
    return (f"**{h} × {w} patches** ({ew} × {eh} px as the encoder saw it, from {ow} × {oh} px; "
            f"rule `{a.image_cfg.resize}`, budget {pixel_budget(a.image_cfg):,} px) · "
            f"**{u['codes']:,} codes** (4 per patch) · **{a.tokens:,} LLM tokens** · "
            f"code usage of this image: **{u['distinct']:,} distinct** of {u['codebook']:,} "
            f"({100 * u['usage']:.2f} %), perplexity {u['perplexity']:.1f}, "
            f"{u['entropy_bits']:.2f} bits of entropy per code")


def _recon_md(a) -> str:
    if not a.drawings:
        return "No drawing path: this model has no latent head, code decoder or drawer."
    rows = "\n".join(f"| {d.name} | {d.psnr:.2f} dB | {d.ssim:.3f} |" for d in a.drawings)
    return "| drawing path | PSNR | SSIM |\n|---|---|---|\n" + rows


def _storage_md(a) -> str:
    s = a.storage
    rows = [("raw RGB (the pixels the encoder saw)", s["raw RGB"]),
            ("uint16 codes", s["uint16 codes"]), ("entropy-packed codes", s["entropy-packed"])]
    out = "| storage | bytes | smaller than raw |\n|---|---|---|\n"
    out += "\n".join(f"| {k} | {v['bytes']:,} | {v['ratio']:,.1f}× |" for k, v in rows)
    bits = s["entropy-packed"]["bits_per_code"]
    return (out + f"\n\n{bits:.2f} bits per packed code. Files: `{a.codes_file.name}` "
            f"({fmt_bytes(a.codes_file.stat().st_size)}), `{a.packed_file.name}` "
            f"({fmt_bytes(a.packed_file.stat().st_size)}, with its header).")


def _answers_md(answers: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | {v or '(empty answer)'} |" for k, v in answers.items())
    return "| model | answer |\n|---|---|\n" + rows


def _gallery(a) -> list[tuple]:
    out = [(a.encoder_image, "the image as the encoder saw it")]
    for d in a.drawings:
        out += [(d.reconstruction, f"{d.name}: reconstruction"),
                (d.error_map, f"{d.name}: error |original − reconstruction|")]
    return out


class Handlers:
    """The page's callbacks over one set of models and one work folder."""

    def __init__(self, models: AppModels, work: Path, max_bytes: int) -> None:
        self.models, self.work, self.max_bytes = models, work, max_bytes

    def _result_dir(self) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        old = sorted(self.work.iterdir(), key=lambda p: p.stat().st_mtime)
        for p in old[:max(0, len(old) - KEEP_RESULTS + 1)]:
            shutil.rmtree(p, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.work, prefix=uuid.uuid4().hex[:8]))

    def run(self, path: str | None, name: str, rule: str, max_pixels: float | None,
            question: str | None = None) -> tuple:
        """(state, status, original, code map, patch, stats, gallery, recon, storage, files,
        answers[, question]) for one image."""
        blank = (None, "", None, None, "", "", [], "", "", None, "")
        if not path:
            return blank + ((question or "",) if question is not None else ())
        try:
            if not name.startswith(("test split:", "bundled photo")):
                check_upload(Path(path), self.max_bytes)
            cfg = image_rule(self.models.model.cfg, rule or "", int(max_pixels or 0))
            a = analyse(self.models, Path(path), name, cfg, self._result_dir())
        except Exception as e:  # a message on the page; the server keeps serving
            msg = f"**Could not use {Path(name).name or 'this file'}:** {describe_error(e)}"
            out = (None, msg) + blank[2:]
            return out + ((question or "",) if question is not None else ())
        original = a.original
        if original.width * original.height > PREVIEW_PIXELS:
            original = original.copy()
            original.thumbnail((2048, 2048))
        status = (f"{a.name}: {a.original.width} × {a.original.height} px → "
                  f"{a.grid[0] * a.grid[1]:,} patches, {a.usage['codes']:,} codes.")
        out = ({"path": path, "name": name, "analysis": a}, status, original, a.code_map,
               "click a patch of the code map", _stats_md(a), _gallery(a), _recon_md(a),
               _storage_md(a), [str(a.codes_file), str(a.packed_file)], "")
        return out + ((question,) if question is not None else ())

    def upload(self, file, rule, max_pixels):
        if file is None:
            return self.run(None, "", rule, max_pixels)
        return self.run(file, Path(file).name, rule, max_pixels)

    def example(self, choice, rule, max_pixels):
        ex = next((e for e in self.models.examples if e.name == choice), None)
        if ex is None:
            return self.run(None, "", rule, max_pixels, "")
        return self.run(str(ex.path), ex.name, rule, max_pixels, ex.question)

    def rerun(self, state, rule, max_pixels):
        if not state:
            return self.run(None, "", rule, max_pixels)
        return self.run(state["path"], state["name"], rule, max_pixels)

    def patch(self, state, evt) -> str:
        if not state:
            return ""
        a = state["analysis"]
        x, y = (int(v) for v in evt.index)
        row, col = y // a.cell, x // a.cell
        if not (0 <= row < a.grid[0] and 0 <= col < a.grid[1]):
            return ""
        codes = a.patch_codes(row, col)
        return f"patch (row {row}, column {col}): codes {', '.join(str(c) for c in codes)}"

    def ask(self, state, question) -> tuple[str, str]:
        if not state:
            return "", "Upload an image or choose an example first."
        try:
            return _answers_md(ask(self.models, state["analysis"], question or "")), ""
        except Exception as e:
            return "", f"**Could not answer:** {describe_error(e)}"


def _header(models: AppModels) -> str:
    paths = ", ".join(models.drawers) or "none"
    llm = ("from the codes, continuous and blind" if models.continuous is not None else
           "from the codes and blind" if models.quantized is not None else "none (no LLM)")
    return ("# viq: an image's codes, its reconstructions and what an LLM answers from them\n\n"
            f"Model: {models.model_id}. Drawing paths: {paths}. Answers: {llm}.\n\n"
            + "\n".join(f"- {line}" for line in models.about))


def build_page(models: AppModels, work: Path, max_bytes: int):
    """The `gradio.Blocks` page (Gradio imported here: the optional extra)."""
    gr = import_gradio()
    h = Handlers(models, work, max_bytes)
    img_cfg = models.model.cfg.image
    rules = list(dict.fromkeys((img_cfg.resize, *RULES)))
    cap = max(4 * pixel_budget(img_cfg), 1 << 20)
    with gr.Blocks(title="viq app", analytics_enabled=False) as page:
        state = gr.State(None)
        gr.Markdown(_header(models))
        with gr.Row():
            upload = gr.UploadButton(f"upload an image (≤ {fmt_bytes(max_bytes)})",
                                     type="filepath", elem_id="upload")
            example = gr.Dropdown([e.name for e in models.examples], value=None,
                                  label="or an example", elem_id="example")
            rule = gr.Dropdown(rules, value=img_cfg.resize, allow_custom_value=True,
                               label="resize rule (native or <base>x<align>)", elem_id="rule")
            max_px = gr.Number(0, minimum=0, maximum=cap, precision=0, elem_id="maxpx",
                               label=f"max pixels (0 = the rule's budget, "
                                     f"{pixel_budget(img_cfg):,}); Enter applies")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            original = gr.Image(label="the image, native size", type="pil", format="png",
                                interactive=False, height=400, elem_id="original")
            code_map = gr.Image(label="code map: one colour per patch's four codes (click one)",
                                type="pil", format="png", interactive=False, height=400,
                                elem_id="codemap")
        patch = gr.Textbox(label="the patch's four codes", interactive=False, elem_id="patch")
        stats = gr.Markdown(elem_id="stats")
        gallery = gr.Gallery(label="reconstructions from the codes and error heat maps",
                             columns=max(3, 1 + 2 * len(models.drawers)), format="png",
                             elem_id="gallery")
        recon = gr.Markdown(elem_id="recon")
        storage = gr.Markdown(elem_id="storage")
        files = gr.File(label="downloads: the codes file and the packed file",
                        file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Row():
            question = gr.Textbox(label="ask a question about the image", scale=4,
                                  elem_id="question")
            ask_btn = gr.Button("ask", scale=1, elem_id="ask")
        answers = gr.Markdown(elem_id="answers")

        shown = [state, status, original, code_map, patch, stats, gallery, recon, storage,
                 files, answers]
        upload.upload(h.upload, [upload, rule, max_px], shown)
        example.change(h.example, [example, rule, max_px], shown + [question])
        gr.on([rule.change, max_px.submit], h.rerun, [state, rule, max_px], shown)

        def on_select(st, evt):
            return h.patch(st, evt)

        # Gradio passes the click by this annotation (a real class: annotations are strings here)
        on_select.__annotations__["evt"] = gr.SelectData
        code_map.select(on_select, [state], [patch])
        gr.on([ask_btn.click, question.submit], h.ask, [state, question], [answers, status])
    return page


def serve(models_fn: Callable[[], AppModels], host: str, port: int | None, max_bytes: int,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Build the models (``models_fn``), the page, and serve it until interrupted; everything
    written goes to one temporary folder, removed at the end."""
    def stop(signum, frame):  # SIGTERM (and SIGINT, even where a shell ignored it) end cleanly
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    root = Path(tempfile.mkdtemp(prefix="viq-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # before Gradio is imported
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        gr = import_gradio()
        models = models_fn()
        page = build_page(models, root / "work", max_bytes)
        page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
        _, url, _ = page.launch(server_name=host, server_port=port, max_file_size=max_bytes,
                                allowed_paths=[str(root / "work")], ssr_mode=False,
                                mcp_server=False, quiet=True, prevent_thread_lock=True,
                                theme=theme, footer_links=[], pwa=False, inbrowser=False)
        if on_ready is not None:
            on_ready(url)
        page.block_thread()
    finally:
        shutil.rmtree(root, ignore_errors=True)
