"""The one training loop (docs/design.md A2, B5.3, D3).

    viq train --preset tiny_stage1 --out-dir runs/s1          # seconds on a laptop

Every stage runs through `Trainer`: build the objective from the config, select the stage's
trainable parameters, start from ``stage.init_from`` (or resume the newest checkpoint of
``out_dir``), then per step: ``grad_accum`` micro-batches under optional bf16 autocast → skip the
step if the loss is not finite (counted; abort after ``run.max_nonfinite`` in a row) → clip →
AdamW → warmup + cosine schedule to a floor. Metrics go to ``metrics.jsonl`` and TensorBoard;
checkpoints go through the one checkpointer, chosen once from ``run.dist`` (`viq.train.checkpoint`:
single-file or sharded, atomic); SIGTERM/SIGINT write a checkpoint and end the run with exit
status 0, and ``--resume`` continues as if it had never stopped (same data order, RNG, optimizer
and schedule). At the end the ViQ model is exported with ``save_pretrained`` into
``out_dir/final`` (``viq encode --checkpoint out_dir/final``), next to ``weights.safetensors``
(what the next stage's ``init_from`` reads) and the model card ``README.md`` with the run's numbers
(`viq.train.card`, C32), and the finish record ``done.json`` is written last (docs/design.md
C23, D4).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from viq.config import save_json, to_dict
from viq.fingerprint import fingerprint
from viq.train import checkpoint as ckpt
from viq.train import dist
from viq.train.config import TrainConfig
from viq.train.data import TrainData, resolve_paths
from viq.train.metrics import MetricsWriter
from viq.train.objective import LossOutput, Objective, build_objective
from viq.train.sharded import Sharded
from viq.train.stages import param_groups, select_trainable, trainable_table
from viq.train.threads import governor_for


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def run_fingerprint(cfg: TrainConfig) -> str:
    """What a checkpoint must share with the run that resumes it (``run.*`` may change)."""
    d = to_dict(cfg)
    d.pop("run")
    return fingerprint(train=d)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    stopped: bool  # ended early by a signal (a checkpoint was written)
    last: dict = field(default_factory=dict)  # the last train metrics record
    nonfinite: int = 0
    is_main: bool = True  # rank 0 (the rank that reports)
    bad_samples: int = 0  # distinct samples skipped by the bad-sample policy (bad_samples.jsonl)


class Trainer:
    """One run: ``Trainer(cfg, out_dir, resume).run()``."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
                 progress: bool = True) -> None:
        self.cfg, self.out, self.resume, self.progress = cfg, Path(out_dir), resume, progress
        self.info = dist.init(cfg.run.dist, cfg.run.device)
        self.device = dist.device_for(self.info, cfg.run.device)
        self.stop_requested = False
        self.nonfinite_total = self.nonfinite_row = 0

    # -- setup ------------------------------------------------------------------------------------

    def _check_out_dir(self) -> None:
        has_run = (self.out / "config.json").is_file()
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out-dir {self.out} is a file; give a folder")
        if has_run and not self.resume:
            raise ValueError(f"--out-dir {self.out} already holds a run (config.json); pass "
                             "--resume to continue it or choose another --out-dir")

    def setup(self) -> None:
        cfg = self.cfg
        self._check_out_dir()
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        dist.barrier(self.info)
        torch.manual_seed(cfg.run.seed)
        self.threads = governor_for(cfg.run.threads)
        self.obj: Objective = build_objective(cfg, self.device)
        self.obj.train()
        trainable = select_trainable(self.obj, cfg.stage)
        if cfg.run.activation_checkpointing:
            import dataclasses

            enc = self.obj.model.encoder
            enc.cfg = dataclasses.replace(enc.cfg, checkpointing=True)
        train_path, val_path = resolve_paths(cfg, self.out, self.info.is_main,
                                             lambda: dist.barrier(self.info))
        self.data = TrainData(cfg, self.obj.tokenizer, train_path, val_path, self.info.rank,
                              self.info.world)
        self.step = 0
        self.fp = run_fingerprint(cfg)
        sharded = cfg.run.dist == "fsdp2"  # the checkpointer is chosen here, once
        self.checkpointer = (Sharded if sharded else ckpt.SingleFile)(self.out, self.info,
                                                                      cfg.run.keep)
        latest = self.checkpointer.latest() if self.resume else None
        self.obj.carried = self._carried(latest)
        if latest is None:  # on the plain module, before DDP/FSDP2 wrap it
            self._initial_weights()
        if sharded:  # FSDP2 swaps in sharded parameters: wrap before the optimizer sees them
            self.net = dist.wrap(self.obj, cfg.run.dist, self.device)
        groups = param_groups(self.obj, cfg.stage, cfg.optim.lr, cfg.optim.weight_decay)
        for g in groups:
            g.pop("names")
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(groups, betas=o.betas, eps=o.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, o.warmup_steps, cfg.run.steps, o.min_lr_ratio))
        if latest is not None:
            self._resume_from(latest)
        self._say(f"{cfg.stage.name}: {len(trainable)} trainable tensors\n"
                  f"{trainable_table(self.obj)}")
        if not sharded:
            self.net = dist.wrap(self.obj, cfg.run.dist, self.device)
        self.metrics = MetricsWriter(self.out, self.info.is_main, cfg.run.tensorboard)
        if self.resume:
            self.metrics.truncate_after(self.step)
        if self.info.is_main:
            save_json(cfg, self.out / "config.json")

    def _carried(self, latest: Path | None) -> frozenset[str]:
        """What the run hands on beside what it trains (`viq.train.checkpoint.saved_names`): the
        entries of ``stage.init_from``'s weights; when resuming a run whose ``init_from`` is gone,
        the entries of its newest (single-file) checkpoint, which held them."""
        init = self.cfg.stage.init_from
        if not init:
            return frozenset()
        try:
            path = ckpt.resolve_init(init)
        except FileNotFoundError:
            if latest is None:
                raise
            newest = latest / "weights.safetensors"
            return ckpt.carried_names(self.obj, newest) if newest.is_file() else frozenset()
        return ckpt.carried_names(self.obj, path)

    def _resume_from(self, folder: Path) -> None:
        """Weights, optimizer, scheduler, data position and RNG of a checkpoint of this run."""
        state = self.checkpointer.load(
            folder, self.obj, self.optimizer, {"fingerprint": self.fp},
            "resume with the run's own config.json or start a new --out-dir")
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        self.step = int(state["step"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self._say(f"resumed from {folder} at step {self.step}")

    def _initial_weights(self) -> None:
        """A fresh start: ``stage.init_from`` or ``stage.encoder_init``, then the calibration of
        what starts fresh. Runs on the plain module before DDP/FSDP2 wrap it (every rank does
        the same, on the same data: see `_calibrate`)."""
        cfg = self.cfg
        fresh: list[str] = []
        if cfg.stage.init_from:
            path = ckpt.resolve_init(cfg.stage.init_from)
            # what the previous run did not train (e.g. adapters it froze) starts fresh here
            allow = cfg.stage.allow_missing + ckpt.untrained_by_source(self.obj, path)
            fresh = ckpt.load_weights(self.obj, path, allow)
            self._say(f"initialised from {path} ({len(fresh)} entries fresh: "
                      f"{', '.join(sorted({'.'.join(n.split('.')[:3]) for n in fresh})) or '-'})")
        elif cfg.stage.encoder_init:
            from viq.train.encoder_init import init_encoder

            self._say(init_encoder(self.obj.model.encoder, cfg.stage.encoder_init))
        if not cfg.stage.init_from and self.resume:
            self._say(f"--resume: no checkpoint in {self.out / 'checkpoints'}; starting fresh")
        self._calibrate(fresh if cfg.stage.init_from else None)

    @torch.no_grad()
    def _calibrate(self, fresh: list[str] | None) -> None:
        """Data-dependent init of fresh parts on the first training batch, before training:
        a fresh quantization path squeezes every token onto one code (`ViQHead.calibrate_fresh`)
        and a fresh projector hands the LLM tokens far off its embedding scale
        (`Projector.calibrate`). Runs at a fresh start only (a resumed run loads the calibrated
        weights), before DDP/FSDP2 wrap the module; draws no RNG. Its batch is the first of the
        whole training set (`TrainData.sample_batch`), the same on every rank, so every rank
        calibrates alike (FSDP2 then keeps each rank's slice)."""
        def new(prefix: str) -> bool:
            return fresh is None or any(n.startswith(prefix) for n in fresh)

        head, text = self.obj.model.head, getattr(self.obj, "text", None)
        todo_head = head.has_codes and new("model.head.project_in.")
        todo_proj = text is not None and new("text.projector.")
        if not (todo_head or todo_proj):
            return
        batch = self.data.sample_batch()
        if batch is None or not batch.images or self.cfg.stage.features == "codes":
            return
        images = [im.to(self.device) for im in batch.images]
        if todo_head:
            before = head.calibrate_fresh(self.obj.model.encoder(images).tokens)
            self._say(f"calibrated the fresh quantization path on {len(images)} images "
                      f"(quantizer input std {before['project_in']:.3g} -> 1, features into "
                      f"the bottleneck {before[head.FRESH_CHAIN[-1]]:.3g} -> the stage-2-1 "
                      "spread)")
        if todo_proj:
            emb = text.llm.get_input_embeddings().weight
            target = float(emb.float().norm(dim=-1).mean())
            before = text.projector.calibrate(self.obj.features(images, pool=False)[0], target)
            self._say(f"calibrated the fresh projector on {len(images)} images (image token "
                      f"norm {before:.3g} -> {target:.3g}, the LLM's word embeddings)")

    def _say(self, text: str) -> None:
        if self.info.is_main and self.progress:
            print(text, flush=True)

    # -- one step ---------------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.run.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compute(self, batch) -> LossOutput:
        """One micro-batch's losses (the forward of the wrapped objective)."""
        with self._autocast():
            return self.net(batch)

    def train_step(self) -> dict:
        cfg = self.cfg
        budget = cfg.stage.max_pixels_at(self.step)
        self.data.set_max_pixels(budget)
        t0 = time.perf_counter()
        terms: dict[str, float] = {}
        stats: dict[str, float] = {}
        total, tokens, finite = 0.0, 0, True
        for i in range(cfg.run.grad_accum):
            batch = self.data.next()
            # DDP/FSDP2 reduce the gradients once, after the step's last micro-batch
            with dist.grad_sync(self.net, cfg.run.dist, sync=i == cfg.run.grad_accum - 1):
                out = self.compute(batch)
                loss = out.total / cfg.run.grad_accum
                if not torch.isfinite(loss.detach()):
                    finite = False
                    if not self.info.active:
                        break
                    # DDP/FSDP2: every rank must run the same backward collectives; the NaN
                    # gradients are dropped below once any_flag has told every rank
                loss.backward()
            total += float(loss.detach())
            for k, v in out.terms.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach()) / cfg.run.grad_accum
            for k, v in out.stats.items():
                stats[k] = float(v)
            tokens += int((batch.tokens.segment_ids >= 0).sum())
        finite = not dist.any_flag(not finite, self.info)
        record: dict = {"lr": self.optimizer.param_groups[0]["lr"]}
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_row += 1
            record.update(skipped="non-finite loss", nonfinite_total=self.nonfinite_total)
            if self.nonfinite_row >= cfg.run.max_nonfinite:
                raise FloatingPointError(
                    f"{self.nonfinite_row} non-finite losses in a row at step {self.step + 1} "
                    f"(run.max_nonfinite={cfg.run.max_nonfinite}); lower optim.lr, use "
                    f"run.dtype=fp32, or check the data; the last checkpoint is in "
                    f"{self.out / 'checkpoints'}")
        else:
            self.nonfinite_row = 0
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            clip = cfg.optim.clip if cfg.optim.clip > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            record.update(loss=dist.mean_scalar(total, self.info), grad_norm=float(norm),
                          **{k: dist.mean_scalar(v, self.info) for k, v in terms.items()},
                          **stats)
        self.scheduler.step()
        seconds = time.perf_counter() - t0
        record["tokens_per_s"] = tokens * self.info.world / max(seconds, 1e-9)
        if budget is not None:
            record["max_pixels"] = budget
        return record

    # -- validation, checkpoints ------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict:
        batches = self.data.val_batches(self.cfg.run.val_batches)
        if not batches:
            return {}
        rng = torch.get_rng_state()  # validation must not shift the training RNG stream
        self.obj.eval()
        sums: dict[str, float] = {}
        for b in batches:
            out = self.compute(b)
            sums["loss"] = sums.get("loss", 0.0) + float(out.total)
            for k, v in out.terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        self.obj.train()
        torch.set_rng_state(rng)
        return {k: dist.mean_scalar(v / len(batches), self.info) for k, v in sums.items()}

    def save(self) -> Path | None:
        state = {"fingerprint": self.fp, "scheduler": self.scheduler.state_dict(),
                 "data": dist.merge_data_states(self.data.state_dict(), self.info),  # every rank's
                 "nonfinite_total": self.nonfinite_total}
        return self.checkpointer.save(self.step, self.obj, self.optimizer, state)

    def export(self) -> Path:
        """``out/final``: the ViQ model (save_pretrained) + the objective's weights, then its
        model card with this run's numbers (`viq.train.card`, docs/design.md C32)."""
        final = self.out / "final"
        self.checkpointer.export(self.obj, self.cfg, final)
        if self.info.is_main:
            from viq.train.card import write_run_card

            write_run_card(final, steps=self.step)
        return final

    # -- the run ----------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True

    def run(self) -> TrainResult:
        self.setup()
        cfg = self.cfg
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = None
        if self.info.is_main and self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.run.steps, initial=self.step, desc=cfg.stage.name,
                       dynamic_ncols=True)
        last: dict = {}
        stopped = False
        try:
            while self.step < cfg.run.steps:
                self.threads.poll()
                record = self.train_step()
                record["threads"] = torch.get_num_threads()
                self.step += 1
                last = record
                if self.step % cfg.run.log_every == 0 or self.step == cfg.run.steps:
                    self.metrics.write(self.step, "train", record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                if cfg.run.val_every and self.step % cfg.run.val_every == 0:
                    self.metrics.write(self.step, "val", self.validate())
                if dist.any_flag(self.stop_requested, self.info):
                    self.save()
                    stopped = True
                    self._say(f"\nstopped by a signal at step {self.step}; checkpoint written, "
                              "continue with --resume")
                    break
                if self.step % cfg.run.checkpoint_every == 0 or self.step == cfg.run.steps:
                    self.save()
            if not stopped:
                if not cfg.run.val_every or cfg.run.steps % cfg.run.val_every:
                    val = self.validate()
                    if val:
                        self.metrics.write(self.step, "val", val)
                if cfg.run.export:
                    self.export()
        finally:
            self.threads.restore()
            for s, h in handlers.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
            self.metrics.close()
        if self.info.is_main and not stopped:
            self.data.stream.write_bad_samples(self.out / "bad_samples.jsonl")
        if not stopped:
            self.checkpointer.finish({"options": {"fingerprint": self.fp}, "steps": self.step})
        return TrainResult(self.out, self.step, stopped, last, self.nonfinite_total,
                           self.info.is_main, self.data.stream.policy.count)


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Run one training stage; see `Trainer`."""
    return Trainer(cfg, out_dir, resume, progress).run()
