"""What the page works with: the model that makes codes, every drawing path, the LLMs that answer,
and the examples (docs/design.md C35).

From the demo's folder (``viq demo``'s ``--out``): stage 2-2 makes the codes, answers from them and
answers blind, and draws with its latent head; the decoder run draws with its code decoder; stage 1
gives the continuous model's answer. From one run folder (``viq train``): what that run has. From
published weights: the release's drawer (latent head + Qwen-Image VAE), no LLM. From a checkpoint:
codes only. Everything is built by the library's loaders (`load_run`, `run_drawer`, `load_drawer`,
`build_model`, docs/design.md D1); nothing here trains or changes a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from viq.data.bundled import bundled_photo
from viq.data.llava import IMAGE_PLACEHOLDER, load_llava
from viq.model.viq import ViQModel

DEMO_DIR = Path("viq_demo_out")  # `viq demo`'s default --out
MAX_EXAMPLES = 8  # test-split images offered beside the bundled photo


@dataclass(frozen=True)
class Example:
    """An image the page offers (the bundled photo, a test-split sample) and its question."""

    name: str
    path: Path
    question: str = ""


@dataclass
class AppModels:
    """``model`` makes the codes; ``drawers`` {name: `ViQDrawer`}; ``quantized``: the run whose
    LLM answers from the codes (and blind), ``continuous``: the stage-1 run (both `Objective`s or
    None); ``about``: one line per part, for the page."""

    model: ViQModel
    model_id: str
    drawers: dict = field(default_factory=dict)
    quantized: object | None = None
    continuous: object | None = None
    about: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)


def is_demo(path: Path) -> bool:
    """A `viq demo` output folder (its stage-2-2 run inside), not one training run."""
    return (path / "stage2_2").is_dir()


def _has_text(run: Path) -> bool:
    from viq.config import load_json
    from viq.eval.understanding import run_files
    from viq.train.config import TrainConfig

    cfg = load_json(TrainConfig, run_files(run)[0])
    return "text" in cfg.stage.losses.active()


def _examples(split: Path | None) -> list[Example]:
    out = [Example("bundled photo (chelsea.jpg)", bundled_photo())]
    if split is None or not split.is_file():
        return out
    for s in load_llava(split)[:MAX_EXAMPLES]:
        if len(s.images) != 1:
            continue
        q = next((m.text for m in s.messages if m.role == "user"), "")
        q = q.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append(Example(f"test split: {s.key}", Path(s.images[0].location), q))
    return out


def _split_of(folder: Path) -> Path | None:
    """The held-out split of a demo's or a run's synthetic data (``data/test.json``)."""
    for data in (folder / "data", folder / "stage2_2" / "data"):
        for cand in (data / "test.json", data / "val.json"):
            if cand.is_file():
                return cand
    return None


def load_run_models(run: Path, device: str = "cpu") -> AppModels:
    """A demo folder or one run folder (or a Hugging Face name of a run, C31)."""
    from viq.eval.drawing import locate_run, objective_drawer, run_drawer
    from viq.eval.understanding import load_run

    if is_demo(run):
        quantized = load_run(run / "stage2_2", device)
        models = AppModels(quantized.model, f"demo {run}: stage 2-2", quantized=quantized,
                           about=[f"codes, answers from codes and blind: {run / 'stage2_2'}"])
        models.drawers["latent head (stage 2-2)"] = objective_drawer(quantized)
        if (run / "decoder").is_dir():
            models.drawers["code decoder"] = run_drawer(run / "decoder", device)
            models.about.append(f"code decoder: {run / 'decoder'}")
        if (run / "stage1").is_dir():
            models.continuous = load_run(run / "stage1", device)
            models.about.append(f"continuous answers: {run / 'stage1'}")
        models.examples = _examples(_split_of(run))
        return models
    run = locate_run(run)
    if run.name == "final" and (run / "train_config.json").is_file():
        run = run.parent
    text = _has_text(run)
    obj = load_run(run, device, answers=text)
    if not obj.model.head.has_codes:
        raise ValueError(f"{run}: stage {obj.cfg.stage.name!r} has no FSQ head, so no codes; give "
                         "a stage-2-2 run, a decoder run or the demo's folder")
    models = AppModels(obj.model, f"run {run}", about=[f"codes: {run}"])
    if text:
        models.quantized = obj
        models.about.append(f"answers from codes and blind: {run}")
    if hasattr(obj, "latent"):
        name = "code decoder" if obj.latent.reads_codes else "latent head"
        models.drawers[name] = objective_drawer(obj)
    models.examples = _examples(_split_of(run))
    return models


def load_weights_models(weights: str | Path, size: str | None = None) -> AppModels:
    """Published weights: their model and, when the files hold it, the release's drawer."""
    from viq.eval.drawing import load_drawer
    from viq.model.factory import build_model

    try:
        drawer = load_drawer(weights, size)
    except (FileNotFoundError, KeyError, ValueError) as e:
        built = build_model(weights=weights, size=size)
        return AppModels(built.model, built.model_id, about=[
            f"codes: {weights}", f"no drawer ({e})"], examples=_examples(None))
    return AppModels(drawer.model, str(weights), {"release drawer": drawer},
                     about=[f"codes and the release's drawer: {weights}"],
                     examples=_examples(None))


def load_checkpoint_models(checkpoint: str | Path) -> AppModels:
    """A viq checkpoint: codes only (a checkpoint holds no drawer and no LLM)."""
    from viq.model.factory import build_model

    built = build_model(checkpoint=checkpoint)
    if not built.model.head.has_codes:
        raise ValueError(f"{checkpoint}: head.quantizer={built.model.cfg.head.quantizer!r} gives "
                         "no discrete codes")
    return AppModels(built.model, built.model_id, about=[f"codes: {checkpoint} (no drawer, "
                                                         "no LLM)"], examples=_examples(None))
