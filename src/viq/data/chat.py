"""Chat template, tokenization with answer-only labels, image slots, and sample packing.

Template (docs/design.md B7.2): the tokenizer's own chat template when it has one, else the
release's ChatML prompt ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n`` followed
by ``<|im_start|>{user|assistant}\\n{text}<|im_end|>\\n`` per message.

Labels (C7): only the answer tokens and the end-of-turn token that closes each answer (e.g.
``<|im_end|>``) are supervised. The release's "−2" quirk (also supervising ``assistant`` and ``\\n``
of the assistant header, and the trailing ``\\n``) is **not** copied.

The rendered conversation is cut into pieces (each message's prefix, text and suffix) that are
tokenized separately and concatenated — so a label boundary never falls inside a BPE token.
``<image>`` becomes `IMAGE_TOKEN_ID` (−200, as in the release); `expand_images` later repeats it to
the number of LLM tokens its image will occupy, so that the packed length is final and the model can
scatter image embeddings into the rows where ``input_ids == IMAGE_TOKEN_ID``.

Packing: samples are laid end to end in rows of ``max_len`` tokens. ``position_ids`` restart at 0
for every sample; ``segment_ids`` give each token its sample (−1 = padding). Hugging Face causal LMs
(transformers ≥ 4.53; checked with 5.24 `masking_utils.find_packed_sequence_indices`) derive a
block-diagonal causal mask from restarting ``position_ids`` when no attention mask (and no KV cache:
pass ``use_cache=False``, see `TokenBatch.model_inputs`) is passed; `block_causal_mask` gives the
same thing as an explicit 4D additive mask (sdpa/eager), and ``cu_seq_lens`` the flash-attention
form. The tests check that a packed batch gives each sample the same loss as running it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from viq.data.llava import IMAGE_PLACEHOLDER, Sample
from viq.data.policy import sample_error

IMAGE_TOKEN_ID = -200
IGNORE_INDEX = -100
SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class Tokenized:
    """A tokenized sample: ``input_ids`` with `IMAGE_TOKEN_ID` at image positions, and ``labels``
    (`IGNORE_INDEX` where not supervised). After `expand_images`, ``image_tokens[i]`` is the length
    of image i's block of slots."""

    key: str
    input_ids: list[int]
    labels: list[int]
    image_tokens: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)


def _chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text: the tokenizer's chat template, else the release's ChatML."""
    if not messages:
        return ""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    return _chatml(messages, add_generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with ``<image>`` → `IMAGE_TOKEN_ID` (split first, as the release
    does)."""
    out: list[int] = []
    for j, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if j:
            out.append(IMAGE_TOKEN_ID)
        if chunk:
            out.extend(tokenizer.encode(chunk, add_special_tokens=False))
    return out


def _pieces(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """Cut the rendered conversation into (text, supervised) pieces; answers + end-of-turn =
    True."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for k, m in enumerate(messages):
        full = render(tokenizer, messages[: k + 1])
        if not full.startswith(done):
            raise ValueError("the tokenizer's chat template is not prefix-stable (rendering one "
                             "more message rewrites earlier text); labels cannot be placed. Use "
                             "a tokenizer without a chat template to get the ChatML default")
        seg = full[len(done):]
        if m["role"] != "assistant":
            pieces.append((seg, False))
        else:
            head = render(tokenizer, messages[:k], add_generation_prompt=True)[len(done):]
            at = seg.find(m["content"], len(head) if seg.startswith(head) else 0)
            if at < 0:
                raise ValueError("the chat template altered an answer's text; labels cannot be "
                                 "placed")
            end = at + len(m["content"])
            pieces += [(seg[:at], False), (m["content"], True), (seg[end:], False)]
        done = full
    return pieces


def tokenize_sample(tokenizer, sample: Sample, system: str | None = SYSTEM_PROMPT) -> Tokenized:
    """Tokenize a conversation; labels on answer tokens and each answer's end-of-turn token."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": m.role, "content": m.text} for m in sample.messages]
    ids: list[int] = []
    labels: list[int] = []
    follows_answer = False
    for text, supervised in _pieces(tokenizer, messages):
        toks = _encode(tokenizer, text)
        if supervised:
            labels += [t if t != IMAGE_TOKEN_ID else IGNORE_INDEX for t in toks]
        elif follows_answer and toks:
            # the suffix after an answer starts with its end-of-turn token: supervise that one only
            labels += [toks[0]] + [IGNORE_INDEX] * (len(toks) - 1)
        else:
            labels += [IGNORE_INDEX] * len(toks)
        ids += toks
        follows_answer = supervised
    return Tokenized(sample.key, ids, labels)


def image_token_count(grid: tuple[int, int]) -> int:
    """LLM tokens of one image after the 2×2 pooled projector (docs/design.md B3.2): (h/2)·(w/2 + 1)
    + 2. Odd grids are padded to even (C3)."""
    h, w = (grid[0] + 1) // 2, (grid[1] + 1) // 2
    return h * (w + 1) + 2


def expand_images(tok: Tokenized, counts: Sequence[int], source: str = "?") -> Tokenized:
    """Repeat each `IMAGE_TOKEN_ID` to its image's block length (labels stay ignored there)."""
    n = tok.input_ids.count(IMAGE_TOKEN_ID)
    if n != len(counts):
        raise sample_error("image_count_mismatch", tok.key, source,
                           f"{n} image positions after templating but {len(counts)} images")
    ids: list[int] = []
    labels: list[int] = []
    it = iter(counts)
    for t, lab in zip(tok.input_ids, tok.labels, strict=True):
        if t == IMAGE_TOKEN_ID:
            c = next(it)
            ids += [IMAGE_TOKEN_ID] * c
            labels += [IGNORE_INDEX] * c
        else:
            ids.append(t)
            labels.append(lab)
    return Tokenized(tok.key, ids, labels, tuple(int(c) for c in counts))


@dataclass
class TokenBatch:
    """Packed rows. All tensors (B, L) int64. ``segment_ids``: index into ``keys`` (−1 = padding);
    ``cu_seq_lens``: flash-attention boundaries over the flattened (B·L) sequence, padding included
    as its own segments; ``image_tokens``: block length per image, in slot order (row-major)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    cu_seq_lens: torch.Tensor
    keys: list[str]
    image_tokens: list[int]

    def attention_mask_4d(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return block_causal_mask(self.segment_ids, dtype)

    def model_inputs(self, form: Literal["position", "4d"] = "position",
                     dtype: torch.dtype = torch.float32) -> dict:
        """Keyword arguments (besides ``input_ids``/``inputs_embeds``) for a HF causal LM.

        ``"position"``: restarting ``position_ids`` and no mask — transformers then builds the
        block-diagonal mask itself (sdpa, eager, flex). ``use_cache=False`` is required: with a KV
        cache transformers skips that detection and the samples of a row would see each other.
        ``"4d"``: an explicit (B, 1, L, L) additive mask in ``dtype`` (sdpa or eager).
        """
        kw: dict = {"position_ids": self.position_ids, "use_cache": False}
        if form == "4d":
            kw["attention_mask"] = self.attention_mask_4d(dtype)
        elif form != "position":
            raise ValueError(f"model_inputs: form must be 'position' or '4d', got {form!r}")
        return kw


def block_causal_mask(segment_ids: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L) segment ids → (B, 1, L, L) additive mask: 0 where query and key share a segment and
    key ≤ query, the dtype's minimum elsewhere. Padding (−1) attends causally among itself only."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, L, L)
    n = segment_ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (same & causal)[:, None]  # (B, 1, L, L)
    zero = torch.zeros((), dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def assign_rows(lengths: Sequence[int], max_len: int, rows: int) -> list[list[int]]:
    """Greedy in-order packing of sample lengths into ``rows`` rows of ``max_len`` (the prefix of
    samples that fits; a sample that does not fit ends the batch). Returns sample indices per
    row."""
    out: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if n > max_len:
            raise ValueError(f"sample {i} has {n} tokens, more than max_len={max_len}")
        if used + n > max_len:
            if len(out) == rows:
                break
            out.append([])
            used = 0
        out[-1].append(i)
        used += n
    return out


def pack(samples: Sequence[Tokenized], max_len: int, pad_id: int,
         rows: int | None = None) -> TokenBatch:
    """Pack samples in order into rows of ``max_len`` (all must fit; see `assign_rows`)."""
    layout = assign_rows([len(s) for s in samples], max_len, rows or len(samples))
    if sum(len(r) for r in layout) != len(samples):
        raise ValueError(f"{len(samples)} samples do not fit in {rows} rows of {max_len} tokens")
    b = len(layout)
    ids = torch.full((b, max_len), pad_id, dtype=torch.long)
    labels = torch.full((b, max_len), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((b, max_len), dtype=torch.long)
    seg = torch.full((b, max_len), -1, dtype=torch.long)
    bounds = [0]
    keys: list[str] = []
    image_tokens: list[int] = []
    for r, members in enumerate(layout):
        at = 0
        for i in members:
            s, n = samples[i], len(samples[i])
            ids[r, at:at + n] = torch.tensor(s.input_ids)
            labels[r, at:at + n] = torch.tensor(s.labels)
            pos[r, at:at + n] = torch.arange(n)
            seg[r, at:at + n] = len(keys)
            keys.append(s.key)
            image_tokens += list(s.image_tokens)
            at += n
            bounds.append(r * max_len + at)
        # padding: positions restart so it is a separate segment for position-based packing
        pos[r, at:] = torch.arange(max_len - at)
        if at < max_len:
            bounds.append((r + 1) * max_len)
    return TokenBatch(ids, labels, pos, seg, torch.tensor(bounds, dtype=torch.int32), keys,
                      image_tokens)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor,
                    segment_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per segment: logits (B, L, V), labels/segments (B, L) → (S,).
    The shift never crosses a sample boundary because a label's target lies in its own segment."""
    logits, tgt = logits[:, :-1], labels[:, 1:]
    same = segment_ids[:, :-1] == segment_ids[:, 1:]
    tgt = torch.where(same, tgt, IGNORE_INDEX)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                           tgt.reshape(-1), ignore_index=IGNORE_INDEX,
                                           reduction="none")
    seg = segment_ids[:, 1:].reshape(-1)
    valid = tgt.reshape(-1) != IGNORE_INDEX
    n = int(segment_ids.max().item()) + 1
    total = torch.zeros(n).index_add_(0, seg[valid], ce[valid])
    count = torch.zeros(n).index_add_(0, seg[valid], torch.ones_like(ce[valid]))
    return total / count.clamp_min(1)

