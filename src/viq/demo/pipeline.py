"""The demo: a miniature ViQ trained end to end on this machine, evaluated, with a report.

    viq demo                  # default (11–12 min on 2 cores)
    viq demo --quick          # a shorter schedule (about 4 min)

Steps, each resumable (rerunning after an interruption continues; finished steps are skipped).
The folder's schedule is kept in ``plan.json``; continuing the folder with another one (``--quick``
or not) is refused (`check_plan`), since its finished steps would be reused as they are; a
finished training run is reused only with this version's recipe (`train_or_reuse`):

1. ``data/``     the synthetic VQA benchmark (`viq.data.synth`: train/val/test + PNG images; each
                 training image asks up to ``train_turns`` questions, `viq.data.synth_turns`;
                 one shape per general scene, ``max_objects``), and ``teacher_data/``: the same
                 seed and splits with the benchmark's full scenes, the teacher's images
2. ``vae/``      a small diffusers AutoencoderKL, started as the exact 8× block-colour autoencoder
                 (`viq.demo.vae_init`) and trained on it (`viq.demo.vae`): the latent target of
                 L_recon and the decoder of reconstructions
3. ``teacher/``  a miniature SigLIP: a small ViT trained sigmoid-contrastively against frozen
                 MiniLM sentence embeddings, plus the shape and colour under each patch
                 (`viq.demo.teacher`): the distillation teacher,
                 and the weights stage 1's student starts from (as the paper's from SigLIP2)
4. ``stage1/`` → ``stage2_1/`` → ``stage2_2/``  the three ViQ stages through `viq.train` with
                 SmolLM2-135M-Instruct (LoRA), each starting from the previous one
   ``decoder/``  the code decoder (`viq.train.stages.decoder`) on the frozen stage-2-2 tokenizer:
                 codes → VAE latents, the reconstructions' path; trained on the training split
                 and crops of the installed photos that are not evaluated (`viq.demo.photos`)
5. ``store/``    the test split's codes (`viq.codes.extract.extract_store`, as ``viq extract``)
6. ``results.json`` + ``report.html``  understanding (continuous stage-1 model / quantized stage
                 2-2 model fed from the stored codes / blind baselines), reconstruction PSNR/SSIM
                 on held-out synthetic images and real photos, code usage, storage.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from viq.config import override


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """How much of everything (``quick`` vs default)."""

    synth_n: int = 1100  # 800 train / 100 val / 200 test (``splits``)
    splits: tuple[float, float, float] = (8 / 11, 1 / 11, 2 / 11)
    # general and detail questions: OCR and chart were at 0-4 % for every model and baseline, and
    # training on them halved what stage 1 read in the others (docs/demo.md, "Understanding")
    categories: tuple[str, ...] = ("general", "detail")
    train_turns: int = 6  # questions per training image (viq.data.synth_turns)
    # one shape per general / detail-distractor scene (viq.data.synth max_objects): with two, the
    # miniature cannot tell which colour belongs to which shape in its budget (docs/demo.md)
    max_objects: int = 1
    # the teacher learns from the benchmark's full scenes (0 = uncapped; more shapes to learn
    # per image): with one-shape scenes stage 1 did not read the image (docs/demo.md)
    teacher_max_objects: int = 0
    vae_steps: int = 170  # ≈ 1.7 min on 2 idle cores (viq.demo.vae)
    teacher_steps: int = 600  # ≈ 2 min (viq.demo.teacher)
    # stage 1, 2-1, 2-2: with 50 + 100 steps of stage 2 the quantized model kept 74 % of stage
    # 1's accuracy, with 100 + 200 all of it (docs/demo.md, "Understanding")
    steps: tuple[int, int, int] = (540, 100, 200)
    decoder_steps: int = 600  # the code decoder on the frozen stage 2-2 (viq.presets)
    photo_crops: int = 36  # crops of each photo not evaluated, for the decoder (viq.demo.photos)
    eval_limit: int = 0  # test samples answered per condition (0 = all)
    fit_limit: int = 100  # training samples of the fit check (viq.demo.evaluate)
    recon_images: int = 12
    photos: int = 4
    vae_crop: int = 128
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    llm: str = "smollm2"  # "tiny" for the in-process test of the whole pipeline
    # SmolLM2's kept layers (llm.keep_layers): ~4.7x stage 1's tokens/s with all 30, but they
    # do not answer from text in their prompt (viq.presets)
    llm_layers: tuple[int, ...] = (0, 1, 2, 27, 28, 29)
    synth_max_side: int = 384
    # one seed for everything random: the benchmark's scenes and questions, the VAE's, teacher's
    # and every stage's initialisation, data order and noise, the decoder's photo crops. The
    # same recipe lands several points apart from one seed to the next (and from one CPU to
    # another): `viq demo --seeds N` measures that spread (viq.demo.sweep, docs/demo.md)
    seed: int = 0


QUICK = DemoPlan(synth_n=300, vae_steps=50, teacher_steps=200, steps=(150, 30, 60), photo_crops=12,
                 decoder_steps=200,
                 eval_limit=30, fit_limit=30, recon_images=6, photos=2)
STAGES = ("stage1", "stage2_1", "stage2_2")


PLAN_FILE = "plan.json"


def _plan_dict(plan: DemoPlan) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(plan)))  # tuples → lists, as stored


class ScheduleMismatch(ValueError):
    """The folder holds a demo made with another schedule (`check_plan`)."""


def check_plan(out: Path, plan: DemoPlan) -> None:
    """A demo folder holds one schedule. Continuing it (or ablating it) with another would reuse
    its finished steps as they are beside steps of the new schedule, so that is refused, naming
    the fields that differ. Folders written before ``plan.json`` existed are checked against the
    plan in their ``results.json`` (on the fields both know), or not at all."""
    out = Path(out)
    want = _plan_dict(plan)
    if (out / PLAN_FILE).is_file():
        have = json.loads((out / PLAN_FILE).read_text())
    elif (out / "results.json").is_file():
        have = json.loads((out / "results.json").read_text()).get("plan", {})
        have = {k: v for k, v in have.items() if k in want}
    else:
        return
    diff = sorted(k for k in have if have[k] != want.get(k))
    if diff:
        raise ScheduleMismatch(f"{out} holds a demo with another schedule "
                               f"({_describe(diff, have, want)}); use the options it was "
                               "started with (--quick or not) or another folder")


def recorded_seed(out: Path) -> int:
    """The seed a demo folder was made with (``plan.json``; 0 for folders from before seeds)."""
    path = Path(out) / PLAN_FILE
    return int(json.loads(path.read_text()).get("seed", 0)) if path.is_file() else 0


def _describe(diff: list[str], have: dict, want: dict) -> str:
    """The first three differing fields, "key: old there, new now", and how many more."""
    shown = "; ".join(f"{k}: {have[k]} there, {want.get(k)} now" for k in diff[:3])
    return shown + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")


def _say(text: str, progress: bool) -> None:
    if progress:
        print(text, flush=True)


def make_data(out: Path, plan: DemoPlan) -> Path:
    """The demo's benchmark (``data/``) and the teacher's images (``teacher_data/``: the same
    seed, categories and split plan with ``plan.teacher_max_objects``, so the teacher never sees
    a test index)."""
    from viq.data.synth import SynthConfig, ensure_json_dataset

    cfg = SynthConfig(n=plan.synth_n, seed=plan.seed, splits=plan.splits,
                      categories=tuple(plan.categories), max_side=plan.synth_max_side,
                      min_side=min(128, plan.synth_max_side), train_turns=plan.train_turns,
                      max_objects=plan.max_objects)
    teacher = dataclasses.replace(cfg, train_turns=1, max_objects=plan.teacher_max_objects)
    ensure_json_dataset(teacher, out / "teacher_data")
    return ensure_json_dataset(cfg, out / "data")


def stage_config(name: str, out: Path, data: Path, plan: DemoPlan):
    """The demo's config of one stage, wired to the demo's data, VAE, teacher and previous run."""
    from viq.presets import get_run

    cfg = get_run(f"demo_{name}")
    i = STAGES.index(name)
    sets = [f"data.train={data / 'train.json'}", f"data.val={data / 'val.json'}",
            f"vae.source={out / 'vae'}", f"teacher.source={out / 'teacher'}",
            f"run.steps={plan.steps[i]}", f"run.checkpoint_every={max(10, plan.steps[i] // 4)}",
            f"llm.source={plan.llm}", f"llm.keep_layers={list(plan.llm_layers)}",
            *seed_sets(plan)]
    if i:
        sets.append(f"stage.init_from={out / STAGES[i - 1]}")
    else:  # the student starts from the teacher, as the paper's from SigLIP2 (design.md A2)
        sets.append(f"stage.encoder_init={out / 'teacher'}")
    return override(cfg, sets)


def seed_sets(plan: DemoPlan) -> list[str]:
    """The plan's seed as a training run's overrides: initialisation and noise, data order."""
    return [f"run.seed={plan.seed}", f"data.loader.seed={plan.seed}"]


def train_stage(name: str, out: Path, data: Path, plan: DemoPlan, progress: bool) -> Path:
    return train_or_reuse(stage_config(name, out, data, plan), out / name, progress,
                          "rerun viq demo")


def decoder_config(out: Path, data: Path, plan: DemoPlan):
    """The demo's code decoder, on the frozen stage-2-2 run (`viq.presets.demo_decoder`),
    trained on the training split and crops of the photos not evaluated (`viq.demo.photos`)."""
    from viq.demo.photos import write_decoder_data
    from viq.presets import demo_decoder

    steps = plan.decoder_steps
    train_file = write_decoder_data(data, plan.photos, plan.photo_crops, seed=plan.seed)
    return override(demo_decoder(), [
        f"data.train={train_file}", f"data.val={data / 'val.json'}",
        f"vae.source={out / 'vae'}", f"teacher.source={out / 'teacher'}",
        f"run.steps={steps}", f"run.checkpoint_every={max(10, steps // 4)}",
        f"llm.source={plan.llm}", f"stage.init_from={out / 'stage2_2'}", *seed_sets(plan)])


def train_decoder(out: Path, data: Path, plan: DemoPlan, progress: bool) -> Path:
    return train_or_reuse(decoder_config(out, data, plan), out / "decoder", progress,
                          "rerun viq demo")


class RecipeChanged(ScheduleMismatch):
    """A finished run in the folder was trained with another recipe than this version's."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a, b) -> bool:
    """Equal values; paths (strings with a /) by their last name: a moved folder still matches."""
    if isinstance(a, str) and isinstance(b, str) and "/" in a and "/" in b:
        return Path(a).name == Path(b).name
    return a == b


def check_recipe(run: Path, cfg) -> None:
    """Raise `RecipeChanged` when the finished ``run`` was trained with another configuration
    than ``cfg`` (``run.*`` aside: steps and checkpointing are the schedule's, `check_plan`).
    Fields one side does not know (a newer or older version's) are not compared."""
    from viq.config import to_dict

    path = Path(run) / "final" / "train_config.json"
    if not path.is_file():
        return
    have = _flat(json.loads(path.read_text()))
    want = _flat(json.loads(json.dumps(to_dict(cfg))))
    diff = sorted(k for k in have.keys() & want.keys()
                  if not k.startswith("run.") and not _same(have[k], want[k]))
    if diff:
        raise RecipeChanged(f"{run} was trained with another recipe "
                            f"({_describe(diff, have, want)}); delete it (and the runs that "
                            "start from it) to train it again, or use another folder")


def train_or_reuse(cfg, run: Path, progress: bool, again: str) -> Path:
    """Train ``cfg`` into ``run``; continue it after an interruption; reuse it when finished
    with the same recipe (`check_recipe`). ``again``: what to rerun to continue, for the
    message of a run stopped by a signal."""
    from viq.train.checkpoint import Checkpointer
    from viq.train.loop import train

    run = Path(run)
    if Checkpointer(run).record() is not None:
        check_recipe(run, cfg)
        _say(f"[{run.name}] done already ({run})", progress)
        return run
    res = train(cfg, run, resume=(run / "config.json").is_file(), progress=progress)
    if res.stopped:
        raise KeyboardInterrupt(f"{run.name} stopped; {again} to continue")
    return run


def extract_test(out: Path, data: Path, progress: bool) -> Path:
    """The test split's codes by the stage-2-2 model, as ``viq extract`` writes them."""
    from viq.codes.extract import extract_store
    from viq.data.sources import open_extract_source
    from viq.model.factory import build_model

    store = out / "store"
    if not (store / "metadata.json").is_file() or _unfinished(store):
        built = build_model(checkpoint=out / "stage2_2" / "final")
        stats = extract_store(built, open_extract_source(data / "test.json"), store,
                              progress=progress)
        _say(f"[extract] {stats.line()}", progress)
    return store


def _unfinished(store: Path) -> bool:
    meta = json.loads((store / "metadata.json").read_text())
    return len(meta.get("shards", [])) < int(meta.get("num_shards", 1))


def run_demo(out: str | Path = "viq_demo_out", quick: bool = False, progress: bool = True,
             plan: DemoPlan | None = None) -> dict:
    """Run (or continue) the whole demo into ``out``; returns the results dict. ``plan``
    replaces the default / quick schedule (tests use a tiny one)."""
    from viq.demo.evaluate import evaluate_demo
    from viq.demo.teacher import train_teacher
    from viq.demo.vae import train_vae
    from viq.presets import demo_teacher_encoder

    out = Path(out)
    plan = plan or (QUICK if quick else DemoPlan())
    check_plan(out, plan)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / PLAN_FILE).is_file():
        from viq.fingerprint import write_json_atomic

        write_json_atomic(out / PLAN_FILE, _plan_dict(plan))
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        _say(f"== {name}", progress)
        value = fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        return value

    data = timed("data", lambda: make_data(out, plan))
    timed("vae", lambda: train_vae(data, out / "vae", steps=plan.vae_steps, crop=plan.vae_crop,
                                   channels=plan.vae_channels, seed=plan.seed,
                                   progress=progress))
    timed("teacher", lambda: train_teacher(out / "teacher_data", out / "teacher",
                                           steps=plan.teacher_steps,
                                           encoder=demo_teacher_encoder(), image_size=128,
                                           seed=plan.seed, progress=progress))
    for name in STAGES:
        timed(name, lambda n=name: train_stage(n, out, data, plan, progress))
    timed("decoder", lambda: train_decoder(out, data, plan, progress))
    store = timed("extract", lambda: extract_test(out, data, progress))
    results = timed("evaluate", lambda: evaluate_demo(out, data, store, plan, progress))
    results["timings"] = {**timings, "total": round(sum(timings.values()), 1)}
    results["plan"] = dataclasses.asdict(plan) | {"quick": quick}
    from viq.demo.report import write_html

    write_html(results, out)
    return results


def run_sweep(out: str | Path, seeds: list[int], quick: bool = False, progress: bool = True,
              plan=None) -> dict:
    """The demo once per seed into ``out/seed_<s>`` (resumable), then ``out/sweep.json`` and
    ``out/sweep.md``; returns the sweep's summary. ``plan`` replaces the default / quick plan
    (its seed is replaced by each of ``seeds``)."""
    from viq.demo.sweep import cpu_name, headline, summarize, targets, to_markdown

    out = Path(out)
    base = plan or (QUICK if quick else DemoPlan())
    rows, runs = [], []
    for seed in seeds:
        if progress:
            print(f"=== seed {seed} ({out / f'seed_{seed}'})", flush=True)
        results = run_demo(out / f"seed_{seed}", quick=quick, progress=progress,
                           plan=dataclasses.replace(base, seed=seed))
        rows.append(headline(results))
        runs.append(f"seed_{seed}")
    plan_dict = dataclasses.asdict(base) | {"quick": quick}
    plan_dict.pop("seed")
    sweep = {"seeds": list(seeds), "runs": runs, "plan": plan_dict, "cpu": cpu_name(),
             "date": time.strftime("%Y-%m-%d"), "summary": summarize(rows),
             "targets": targets(rows)}
    (out / "sweep.json").write_text(json.dumps(sweep, indent=1) + "\n")
    (out / "sweep.md").write_text(to_markdown(sweep) + "\n")
    return sweep
