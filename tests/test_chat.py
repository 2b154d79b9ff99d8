"""Chat template, answer-only labels, image slots, and leakage-free packing through a real tiny
Qwen2."""

from __future__ import annotations

import os

import pytest
import torch

from viq.backends.llm import (
    QWEN2_SPECIALS,
    QWEN2_SPLIT,
    qwen2_tokenizer,
    qwen_tiktoken_file,
    tiny_qwen2,
)
from viq.data.chat import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    assign_rows,
    block_causal_mask,
    expand_images,
    image_token_count,
    pack,
    per_sample_loss,
    tokenize_sample,
)
from viq.data.llava import Message, Sample

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHATML_JINJA = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    # converted once per session; later test files load the cached tokenizer.json (~1 s)
    return qwen2_tokenizer(tmp_path_factory.getbasetemp() / "qwen2-tokenizer")


def convo(*turns: str, key: str = "s", images: int = 0) -> Sample:
    from viq.data.llava import ImageRef

    roles = ["user", "assistant"] * len(turns)
    msgs = tuple(Message(r, t) for r, t in zip(roles, turns, strict=False))
    return Sample(key, "test", msgs, tuple(ImageRef(f"{i}.png") for i in range(images)))


def test_qwen2_ids_match_tiktoken(tok):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(qwen_tiktoken_file()))
    enc = tiktoken.Encoding("qwen2", pat_str=QWEN2_SPLIT, mergeable_ranks=ranks,
                            special_tokens={t: 151643 + i for i, t in enumerate(QWEN2_SPECIALS)})
    text = ("Hello world! 12345 <|im_start|>user\nWhat's   this?\n\n 中文 ünïcödé 🙂\t"
            "x=3.14;<|im_end|>\n")
    assert len(tok) == 151646
    assert tok(text)["input_ids"] == enc.encode(text, allowed_special="all")
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645 == tok.eos_token_id


def supervised_text(tok, t) -> str:
    return tok.decode([x for x in t.labels if x != IGNORE_INDEX])


@pytest.mark.parametrize("template", ["chatml-default", "tokenizer-template"])
def test_labels_decode_to_answers_plus_end_of_turn(tok, template):
    if template == "tokenizer-template":
        tok = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>",
                            pad_token="<|endoftext|>")
        tok.chat_template = CHATML_JINJA
    s = convo("<image>\nWhat colour is the cat?", "Red, mostly.",
              "And <image> this one?", " Two cats\nsitting.", images=2)
    t = tokenize_sample(tok, s)
    assert supervised_text(tok, t) == "Red, mostly.<|im_end|> Two cats\nsitting.<|im_end|>"
    assert t.input_ids.count(IMAGE_TOKEN_ID) == 2
    # every label equals its input token (next-token shift happens in the loss)
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(t.input_ids, t.labels, strict=True))
    full = tok.decode([x for x in t.input_ids if x >= 0])
    assert full.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|im_start|>assistant\nRed, mostly.<|im_end|>\n" in full
    # the header "assistant\n" and the newline after <|im_end|> are not supervised (no "-2" quirk)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    sup = [x for x in t.labels if x != IGNORE_INDEX]
    assert sup.count(im_end) == 2 and tok.convert_tokens_to_ids("assistant") not in sup


def test_expand_images_and_token_count(tok):
    t = tokenize_sample(tok, convo("<image><image>Q?", "A.", images=2))
    assert image_token_count((24, 24)) == 158  # docs/design.md B3.2: 384² → 158 LLM tokens
    assert image_token_count((3, 5)) == image_token_count((4, 6))  # odd grids padded to even
    e = expand_images(t, [3, 5])
    assert e.input_ids.count(IMAGE_TOKEN_ID) == 8 and len(e) == len(t) + 6
    assert supervised_text(tok, e) == supervised_text(tok, t)
    with pytest.raises(ValueError, match="image_count_mismatch"):
        expand_images(t, [3])


def test_assign_rows_and_pack_layout():
    assert assign_rows([3, 4, 2, 5], 8, 2) == [[0, 1], [2, 3]]
    assert assign_rows([3, 4, 2, 5], 8, 1) == [[0, 1]]
    from viq.data.chat import Tokenized

    items = [Tokenized(str(i), [i + 1] * n, [i + 1] * n) for i, n in enumerate([3, 4, 2])]
    b = pack(items, 8, pad_id=0, rows=2)
    assert b.input_ids.shape == (2, 8)
    assert b.position_ids[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert b.segment_ids[0].tolist() == [0, 0, 0, 1, 1, 1, 1, -1]
    assert b.segment_ids[1].tolist() == [2, 2] + [-1] * 6
    assert b.cu_seq_lens.tolist() == [0, 3, 7, 8, 10, 16]
    m = block_causal_mask(b.segment_ids)
    assert m.shape == (2, 1, 8, 8)
    assert m[0, 0, 4, 3] == 0 and m[0, 0, 4, 2] < -1e30 and m[0, 0, 3, 4] < -1e30


def _embed(model, ids: torch.Tensor, images: list[torch.Tensor]) -> torch.Tensor:
    emb = model.get_input_embeddings()(ids.clamp_min(0))
    slots = ids == IMAGE_TOKEN_ID
    if images:
        emb = emb.masked_scatter(slots[..., None], torch.cat(images))
    return emb


def test_packed_loss_equals_separate_loss(tok):
    """No attention or position leakage between packed samples (position_ids form and 4D mask)."""
    samples = [
        convo("<image>\nWhat is it?", "A red square.", key="a", images=1),
        convo("Say hi.", "hi", "Again, twice.", "hi hi", key="b"),
        convo("<image><image>Compare.", "The left one is larger than the right one.", key="c",
              images=2),
        convo("Count: 1 2 3?", "three", key="d"),
    ]
    model = tiny_qwen2(len(tok), hidden=32, layers=2)
    eager = tiny_qwen2(len(tok), hidden=32, layers=2, attn_implementation="eager")
    g = torch.Generator().manual_seed(0)
    toks, blocks = [], []
    for s in samples:
        counts = [2 + 3 * k for k in range(len(s.images))]
        toks.append(expand_images(tokenize_sample(tok, s), counts))
        blocks.append([torch.randn(c, 32, generator=g) for c in counts])
    with torch.no_grad():
        separate = []
        for t, ims in zip(toks, blocks, strict=True):
            ids = torch.tensor([t.input_ids])
            logits = model(inputs_embeds=_embed(model, ids, ims)).logits
            separate.append(per_sample_loss(logits, torch.tensor([t.labels]),
                                            torch.zeros_like(ids))[0])
        separate = torch.stack(separate)
        # two rows: samples a+b share row 0, c+d row 1 (padding at the end of the shorter row)
        max_len = max(len(toks[0]) + len(toks[1]), len(toks[2]) + len(toks[3]))
        b = pack(toks, max_len=max_len, pad_id=tok.pad_token_id, rows=2)
        assert b.input_ids.shape[0] == 2 and len(b.keys) == 4 and (b.segment_ids == -1).any()
        emb = _embed(model, b.input_ids, [x for ims in blocks for x in ims])
        by_pos = model(inputs_embeds=emb, **b.model_inputs("position")).logits
        by_mask = eager(inputs_embeds=emb, **b.model_inputs("4d")).logits
        # a KV cache disables transformers' position-based packing detection: leaks, as does
        # ignoring the packing altogether
        cached = model(inputs_embeds=emb, position_ids=b.position_ids, use_cache=True).logits
        leaky = model(inputs_embeds=emb).logits
    for logits in (by_pos, by_mask):
        packed = per_sample_loss(logits, b.labels, b.segment_ids)
        torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)
    for logits in (cached, leaky):
        assert (per_sample_loss(logits, b.labels, b.segment_ids) - separate).abs().max() > 1e-3
