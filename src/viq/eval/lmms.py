"""viq as an lmms-eval model: ``--model viq --model_args run=RUN[,codes=STORE][,mode=…]``
(docs/design.md C36).

Any trained run with an LLM (`viq.eval.understanding.load_run`) answers lmms-eval's requests with
the same code `viq eval` uses: the prompt from `viq.supervision.text.tokenize_prompt` (the run's
system prompt and chat template, one ``<image>`` block per image), the image features from
`viq.eval.understanding._features` (or `ViQModel.embed` of stored codes), greedy answers from
`TextSupervision.generate`, requests taken in document order in chunks of ``batch_size`` (8, as
`viq.eval.understanding.predict`), so the two harnesses give the same answer to each question.

- ``run=``: a run folder or a Hugging Face name holding a run's ``final/`` (C31).
- ``codes=STORE``: a request's images are looked up in a code store (C17) by the sample id of its
  document (the field ``codes_key=``, default ``id``; the store's ``sample_id``), one row per
  image in order; no pixels are encoded. The store must be of the run's tokenizer (levels, config
  hash and weights file checked); a path image of the request must have the stored original size.
- ``mode=``: ``images`` (default), ``blind`` (no image tokens), ``shuffled`` (request k gets the
  images of request k+1 of the same call, in document order, circularly: `viq eval
  --mode shuffled`'s derangement).
- ``dtype=fp32|bf16`` (the LLM and projector), ``device=cpu|cuda[:k]``, ``batch_size=``.

``generate_until`` is greedy, stops at the tokenizer's end of turn or ``max_new_tokens`` (default
10, `predict`'s) and cuts the text at the first ``until`` string. ``loglikelihood`` is the sum of
the continuation's token log-probabilities after the prompt (chat template with generation
prompt, then the continuation's tokens) and whether each is the argmax; one request per LLM
forward. Features are batched over a chunk; answers are decoded one prompt at a time (as
``viq eval``: no padding, so no batch-size dependence).

Registered through the ``lmms_eval.models`` entry point (`manifest`): lmms-eval ≥ 0.7 loads it
when it builds its model registry. The chat class (`ViQChatLMM`) is the default; lmms-eval's
``force_simple`` picks `ViQLMM` (context string + ``doc_to_visual``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from viq.data.llava import IMAGE_PLACEHOLDER

MODES = ("images", "blind", "shuffled")
KNOWN_ARGS = ("run", "codes", "mode", "dtype", "device", "batch_size", "codes_key")
DTYPE_NAMES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}


class ModelArgError(ValueError):
    """A bad ``--model_args`` value; the message names the argument and the fix."""


def manifest():
    """The ``lmms_eval.models`` entry point: ``viq`` → the chat class and the simple class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="viq", simple_class_path="viq.eval.lmms.ViQLMM",
                         chat_class_path="viq.eval.lmms.ViQChatLMM")


def _bad(name: str, value, what: str) -> ModelArgError:
    return ModelArgError(f"viq model_args: {name}={value}: {what}")


def check_store(store, run: Path, obj) -> None:
    """Refuse a store written by another tokenizer than ``obj``'s (levels, config, weights)."""
    from viq.eval.understanding import run_files
    from viq.fingerprint import file_sha256, fingerprint

    meta = store.meta
    levels = [int(v) for v in obj.model.levels]
    if [int(v) for v in meta.get("levels", [])] != levels:
        raise _bad("codes", store.path, f"its codes have levels {meta.get('levels')}, the run's "
                   f"tokenizer {levels}: a store of another model; extract one with viq extract "
                   f"--checkpoint {run}/final")
    model = meta.get("model", {})
    if model.get("config_hash") not in (None, fingerprint(config=obj.model.cfg)):
        raise _bad("codes", store.path, "written by a model of another configuration than the "
                   f"run's tokenizer; extract one with viq extract --checkpoint {run}/final")
    weights = run_files(run)[1].parent / "model.safetensors"
    if model.get("weights_sha256") and weights.is_file() \
            and model["weights_sha256"] != file_sha256(weights):
        raise _bad("codes", store.path, f"written by other weights than {weights}; extract it "
                   f"with viq extract --checkpoint {weights.parent}")


class ViQLMM(lmms):
    """The simple form: requests carry a context string and ``doc_to_visual``."""

    is_simple = True

    def __init__(self, run: str | None = None, codes: str | None = None, mode: str = "images",
                 dtype: str = "fp32", device: str = "cpu", batch_size: int | str = 8,
                 codes_key: str = "id", max_batch_size=None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise ModelArgError(f"viq model_args: unknown argument(s) {sorted(unknown)}; the "
                                f"model takes {', '.join(KNOWN_ARGS)}")
        if not run:
            raise ModelArgError("viq model_args: run= is missing; give run=RUN_DIR, a viq train "
                                "run with an LLM")
        if mode not in MODES:
            raise _bad("mode", mode, f"unknown mode; one of {', '.join(MODES)} (stored codes: "
                       "codes=STORE)")
        if str(dtype) not in DTYPE_NAMES:
            raise _bad("dtype", dtype, f"unknown dtype; one of {', '.join(DTYPE_NAMES)}")
        device = str(device or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise _bad("device", device, "this machine has no CUDA device; use device=cpu")
        try:
            self.batch = max(1, int(batch_size))
        except (TypeError, ValueError):
            self.batch = 8  # lmms-eval's "auto": predict's chunk
        self.mode, self.codes_key = mode, str(codes_key)
        self._load(run, codes, DTYPE_NAMES[str(dtype)], device)

    def _load(self, run: str, codes: str | None, dtype: str, device: str) -> None:
        from viq.backends.llm import quiet_loading
        from viq.codes.store import CodeStore, StoreError
        from viq.config import DTYPES
        from viq.eval.drawing import locate_run
        from viq.eval.understanding import load_run

        quiet_loading()
        try:
            path = locate_run(run)
            if path.name == "final" and (path / "train_config.json").is_file():
                path = path.parent
            self.obj = load_run(path, device)
        except (ValueError, FileNotFoundError, OSError) as e:
            raise _bad("run", run, f"{e}") from None
        if dtype != "fp32":
            self.obj.text.to(DTYPES[dtype])
        self.store = None
        if codes is not None:
            if not Path(codes).is_dir():
                raise _bad("codes", codes, "no such folder; give a code store written by viq "
                           "extract from this run's tokenizer")
            try:
                self.store = CodeStore(codes)
            except StoreError as e:
                raise _bad("codes", codes, f"{e}") from None
            check_store(self.store, path, self.obj)
        self.run = path

    # -- requests → (question, system, visuals, doc) ------------------------------------------

    def _doc(self, doc_id, task, split):
        return self.task_dict[task][split][doc_id]

    def _parse(self, req: Instance) -> tuple[str, str | None, list, dict]:
        ctx, _gen, doc_to_visual, doc_id, task, split = req.args
        doc = self._doc(doc_id, task, split)
        visuals = doc_to_visual(doc) if doc_to_visual is not None else []
        return str(ctx), None, _flat(visuals), doc

    # -- images and stored codes --------------------------------------------------------------

    def _load_image(self, v, key: str) -> torch.Tensor:
        from viq.data.images import load_for_encoder

        cfg = self.obj.cfg.model.image
        if isinstance(v, (str, Path)):
            return load_for_encoder(v, cfg, name=f"{key}: {v}")
        if hasattr(v, "save"):  # a PIL image: its pixels, through the same loader as files
            buf = io.BytesIO()
            v.save(buf, format="PNG")
            return load_for_encoder(buf.getvalue(), cfg, name=key)
        raise ValueError(f"viq: request {key}: cannot read a visual of type {type(v).__name__} "
                         "(images only: a path or a PIL image)")

    def _stored(self, doc: dict, visuals: list, key: str) -> list:
        sid = doc.get(self.codes_key) if isinstance(doc, dict) else None
        if sid is None:
            raise _bad("codes", self.store.path, f"request {key}: its document has no "
                       f"{self.codes_key!r} field to look the codes up by; name the document's "
                       "id field with codes_key=FIELD")
        rows = [self.store[r] for r in self.store.rows_of(str(sid))]
        rows = [r for r in rows if r.num_images]
        if len(rows) != len(visuals):
            raise _bad("codes", self.store.path, f"sample {sid!r}: the store holds {len(rows)} "
                       f"image(s), the request has {len(visuals)}; extract the store from this "
                       "benchmark's split")
        for r, v in zip(rows, visuals, strict=True):
            if isinstance(v, (str, Path)):
                from PIL import Image

                with Image.open(v) as im:
                    if tuple(im.size) != tuple(r.original_size):
                        raise _bad("codes", self.store.path, f"sample {sid!r}: stored codes of "
                                   f"a {r.original_size} image, the request's is {im.size}")
        return [r.image_codes for r in rows]

    def _inputs(self, items: list[tuple], keys: list[str]):
        """Per request (grids, features source): pixels or stored codes, shuffled or not."""
        p = self.obj.cfg.model.encoder.patch_size
        per = []
        for (_, _, visuals, doc), key in zip(items, keys, strict=True):
            if self.store is not None:
                codes = self._stored(doc, visuals, key)
                per.append(("codes", codes, [c.grid for c in codes]))
            else:
                ims = [self._load_image(v, key) for v in visuals]
                per.append(("pixels", ims, [(-(-im.shape[1] // p), -(-im.shape[2] // p))
                                            for im in ims]))
        if self.mode == "shuffled" and len(per) > 1:  # request k sees request k+1's images
            per = per[1:] + per[:1]
        return per

    def _features(self, chunk: list):
        from viq.eval.understanding import _features

        if self.mode == "blind":
            return None
        if self.store is not None:
            stored = [c for _, codes, _ in chunk for c in codes]
            return self.obj.model.embed(stored) if stored else None
        ims = [im for _, x, _ in chunk for im in x]
        return _features(self.obj, ims) if ims else None

    def _prompt(self, question: str, system: str | None, grids: list, n: int, key: str):
        from viq.supervision.text import tokenize_prompt

        if question.count(IMAGE_PLACEHOLDER) != n:
            if IMAGE_PLACEHOLDER in question:
                raise ValueError(f"viq: request {key}: {question.count(IMAGE_PLACEHOLDER)} "
                                 f"{IMAGE_PLACEHOLDER} in the text for {n} image(s)")
            question = f"{IMAGE_PLACEHOLDER}\n" * n + question
        sys_prompt = system if system is not None else self.obj.cfg.data.loader.system_prompt
        return tokenize_prompt(self.obj.tokenizer, question, grids, system=sys_prompt, key=key)

    def _order(self, requests: Sequence[Instance]) -> list[int]:
        def where(i):
            a = requests[i].args
            return (str(a[-2]), str(a[-1]), int(a[-3]) if isinstance(a[-3], int) else 0, i)

        return sorted(range(len(requests)), key=where)

    # -- lmms-eval's API --------------------------------------------------------------------

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        order = self._order(requests)
        items = [self._parse(requests[i]) for i in order]
        keys = [f"{requests[i].args[-2]}/{requests[i].args[-3]}" for i in order]
        gens = [self._gen_kwargs(requests[i]) for i in order]
        per = self._inputs(items, keys)
        out: dict[int, str] = {}
        groups: dict[int, list[int]] = {}
        for j, g in enumerate(gens):  # one max_new_tokens per generate call
            groups.setdefault(g[0], []).append(j)
        for max_new, js in groups.items():
            for s in range(0, len(js), self.batch):
                part = js[s:s + self.batch]
                chunk = [per[j] for j in part]
                feats = self._features(chunk)
                prompts = [self._prompt(items[j][0], items[j][1], per[j][2], len(per[j][2]),
                                        keys[j]) for j in part]
                answers = self.obj.text.generate(feats, prompts, max_new,
                                                 blind=self.mode == "blind")
                for j, a in zip(part, answers, strict=True):
                    out[order[j]] = _cut(a, gens[j][1]).strip()
        return [out[i] for i in range(len(requests))]

    @staticmethod
    def _gen_kwargs(req: Instance) -> tuple[int, list[str]]:
        gen = next((a for a in req.args if isinstance(a, dict)), {}) or {}
        until = gen.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        return int(gen.get("max_new_tokens", 10)), until

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        from viq.data.chat import IMAGE_TOKEN_ID

        order = self._order(requests)
        items, keys, conts = [], [], []
        for i in order:
            ctx, cont, doc_to_visual, doc_id, task, split = requests[i].args
            doc = self._doc(doc_id, task, split)
            conts.append(cont if isinstance(cont, str) else cont(doc))
            items.append((str(ctx), None, _flat(doc_to_visual(doc) if doc_to_visual else []),
                          doc))
            keys.append(f"{task}/{doc_id}")
        per = self._inputs(items, keys)
        text, tok = self.obj.text, self.obj.tokenizer
        out: dict[int, tuple[float, bool]] = {}
        for j, i in enumerate(order):
            prompt = self._prompt(items[j][0], None, per[j][2], len(per[j][2]), keys[j])
            cont_ids = tok.encode(conts[j], add_special_tokens=False)
            ids = torch.tensor([prompt.input_ids + cont_ids], dtype=torch.long)
            blocks, expected = [], []
            if self.mode == "blind":
                ids = ids[ids != IMAGE_TOKEN_ID][None]
            else:
                feats = self._features([per[j]])
                blocks = text.projector(feats) if feats is not None else []
                expected = prompt.image_tokens
            logits = text.llm(inputs_embeds=text.embed(ids, blocks, expected)).logits[0]
            n = len(cont_ids)
            logp = torch.log_softmax(logits[-n - 1:-1].float(), dim=-1)  # (n, V)
            target = torch.tensor(cont_ids, device=logp.device)
            total = float(logp.gather(1, target[:, None]).sum())
            out[i] = (total, bool((logp.argmax(-1) == target).all()))
        return [out[i] for i in range(len(requests))]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("viq: multi-round generation is not supported; use "
                                  "single-turn generate_until tasks")


class ViQChatLMM(ViQLMM):
    """The chat form: requests carry ``doc_to_messages`` (lmms-eval's default for a chat model).
    One user turn (text and images, in order) and an optional system turn."""

    is_simple = False

    def _parse(self, req: Instance) -> tuple[str, str | None, list, dict]:
        ctx, doc_to_messages, _gen, doc_id, task, split = req.args
        doc = self._doc(doc_id, task, split)
        messages = doc_to_messages(doc) if callable(doc_to_messages) else doc_to_messages
        system, users = None, []
        for m in messages or []:
            if m.get("role") == "system":
                c = m.get("content")
                system = c if isinstance(c, str) else " ".join(
                    p.get("text", "") for p in c if p.get("type") == "text")
            elif m.get("role") == "user":
                users.append(m)
            else:
                raise ValueError(f"viq: request {task}/{doc_id}: a {m.get('role')!r} turn; "
                                 "only one user turn (and a system turn) is supported")
        if len(users) != 1:
            raise ValueError(f"viq: request {task}/{doc_id}: {len(users)} user turns; one is "
                             "supported")
        content = users[0].get("content")
        if isinstance(content, str):
            return content, system, [], doc
        text, visuals = "", []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                text += part.get("text", "")
            elif kind == "image":
                visuals.append(part.get("url", part.get("image")))
            else:
                raise ValueError(f"viq: request {task}/{doc_id}: a {kind!r} input; viq reads "
                                 "images and text only")
        return text, system, visuals, doc


def _flat(visuals) -> list:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    return [v for x in visuals for v in _flat(x)]


def _cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any ``until`` string."""
    cut = min((text.find(u) for u in until if u and u in text), default=-1)
    return text if cut < 0 else text[:cut]

