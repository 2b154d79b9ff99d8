"""L_text through a real tiny Qwen2 with peft LoRA/DoRA (docs/design.md B3.3, B5.1, B5.2, C7)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from viq.config import from_dict, override, to_dict
from viq.data.chat import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    expand_images,
    image_token_count,
    pack,
    tokenize_sample,
)
from viq.data.llava import ImageRef, Message, Sample
from viq.model.packing import Packed
from viq.supervision.config import LLMConfig
from viq.supervision.text import TextSupervision, tokenize_prompt

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRIDS = [[(2, 2)], [], [(3, 5), (1, 1)]]  # per sample: its images' patch grids
TURNS = [("<image>\nWhat is it?", "A red square."), ("Say hi.", "hi"),
         ("<image><image>Compare.", "The left one is larger.")]


def make_batch(tok, width: int = 32, seed: int = 0, grids=GRIDS, turns=TURNS, rows: int = 2):
    """Packed features for every image + the packed token batch (samples in order)."""
    toks, all_grids = [], []
    for k, ((q, a), gs) in enumerate(zip(turns, grids, strict=True)):
        s = Sample(f"s{k}", "test", (Message("user", q), Message("assistant", a)),
                   tuple(ImageRef(f"{k}_{i}.png") for i in range(len(gs))))
        toks.append(expand_images(tokenize_sample(tok, s), [image_token_count(g) for g in gs]))
        all_grids += gs
    max_len = max(sum(len(t) for t in toks[:2]), *(len(t) for t in toks))  # s0 + s1 share a row
    batch = pack(toks, max_len=max_len, pad_id=tok.pad_token_id, rows=rows)
    g = torch.Generator().manual_seed(seed)
    n = sum(h * w for h, w in all_grids)
    feats = Packed(torch.randn(n, width, generator=g), tuple(all_grids)) if all_grids else None
    return feats, batch


@pytest.fixture(scope="module")
def sup():
    torch.manual_seed(0)
    return TextSupervision(LLMConfig(adapter="lora", dropout=0.0), feature_dim=32).eval()


def manual_loss(sup, feats, batch):
    """Full logits, every position, plain shifted CE over supervised labels within a sample."""
    llm = sup.llm
    emb = llm.get_input_embeddings()(batch.input_ids.clamp_min(0))
    slots = batch.input_ids == IMAGE_TOKEN_ID
    emb = emb.masked_scatter(slots[..., None], torch.cat(sup.projector(feats)))
    logits = llm(inputs_embeds=emb, position_ids=batch.position_ids, use_cache=False).logits
    tgt = batch.labels[:, 1:].clone()
    tgt[batch.segment_ids[:, 1:] != batch.segment_ids[:, :-1]] = IGNORE_INDEX
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tgt.flatten(),
                           ignore_index=IGNORE_INDEX)


def test_loss_equals_manual_cross_entropy(sup):
    feats, batch = make_batch(sup.tokenizer)
    assert batch.input_ids.shape[0] == 2 and (batch.segment_ids[0] == 1).any()  # packed row
    with torch.no_grad():
        loss = sup(feats, batch)
        ref = manual_loss(sup, feats, batch)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    # image features matter: other features, other loss
    other, _ = make_batch(sup.tokenizer, seed=1)
    with torch.no_grad():
        assert abs(float(sup(other, batch)) - float(loss)) > 1e-4


def test_gradients_reach_projector_and_adapters_only(sup):
    feats, batch = make_batch(sup.tokenizer)
    sup.zero_grad(set_to_none=True)
    sup(feats, batch).backward()
    for name, p in sup.projector.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    lora_b = [(n, p) for n, p in sup.llm.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora_b)
    frozen = [(n, p) for n, p in sup.llm.named_parameters() if "lora_" not in n]
    assert any("embed_tokens" in n for n, _ in frozen)
    assert all(not p.requires_grad and p.grad is None for _, p in frozen)
    assert "tokenizer" not in dict(sup.named_children())
    sup.zero_grad(set_to_none=True)


def test_text_only_batch_and_mismatch_errors(sup):
    _, batch = make_batch(sup.tokenizer, grids=[[]], turns=[("Say hi.", "hi")], rows=1)
    with torch.no_grad():
        assert torch.isfinite(sup(None, batch))
    feats, batch = make_batch(sup.tokenizer)
    wrong = Packed(torch.randn(4 + 15 + 16, 32), ((2, 2), (3, 5), (4, 4)))
    with pytest.raises(ValueError, match="expanded"):
        sup(wrong, batch)


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_adapters_train_and_merge(adapter):
    torch.manual_seed(0)
    sup = TextSupervision(LLMConfig(adapter=adapter, rank=8, alpha=16.0), feature_dim=32)
    if adapter == "dora":
        assert any("lora_magnitude_vector" in n for n, _ in sup.named_parameters())
    feats, batch = make_batch(sup.tokenizer)
    params = [p for p in sup.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    with torch.no_grad():
        before = float(sup.eval()(feats, batch))
    sup.train()
    for _ in range(8):
        opt.zero_grad()
        sup(feats, batch).backward()
        opt.step()
    sup.eval()
    with torch.no_grad():
        after = float(sup(feats, batch))
        emb = sup.embed(batch.input_ids, sup.projector(feats), batch.image_tokens)
        adapted = sup.llm(inputs_embeds=emb, **batch.model_inputs()).logits
    assert after < before - 0.2  # the tiny LM starts at ≈ ln(vocab) ≈ 11.9 and moves slowly
    assert all(p.abs().sum() > 0 for n, p in sup.llm.named_parameters() if "lora_B" in n)
    sup.merge_adapters()
    assert not any("lora_" in n for n, _ in sup.named_parameters())
    with torch.no_grad():
        merged = sup.llm(inputs_embeds=emb, **batch.model_inputs()).logits
        torch.testing.assert_close(float(sup(feats, batch)), after, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)


def test_frozen_and_full_adapters():
    torch.manual_seed(0)
    none = TextSupervision(LLMConfig(adapter="none"), feature_dim=16)
    assert not any(p.requires_grad for p in none.llm.parameters())
    assert all(p.requires_grad for p in none.projector.parameters())
    full = TextSupervision(LLMConfig(adapter="full"), feature_dim=16)
    assert all(p.requires_grad for p in full.llm.parameters())


def greedy_without_cache(sup, emb, stop, n):
    out = []
    for _ in range(n):
        nxt = sup.llm(inputs_embeds=emb).logits[0, -1].argmax()
        if int(nxt) in stop:
            break
        out.append(int(nxt))
        emb = torch.cat([emb, sup.llm.get_input_embeddings()(nxt.view(1, 1))], dim=1)
    return sup.tokenizer.decode(out, skip_special_tokens=True)


def test_generate_and_blind(sup):
    tok = sup.tokenizer
    grids = [(2, 2), (3, 5)]
    prompts = [tokenize_prompt(tok, "<image>\nWhat is it?", grids[:1]),
               tokenize_prompt(tok, "No image here."),
               tokenize_prompt(tok, "<image> again", grids[1:])]
    assert prompts[0].input_ids.count(IMAGE_TOKEN_ID) == image_token_count(grids[0])
    assert tok.decode([t for t in prompts[1].input_ids]).endswith("<|im_start|>assistant\n")
    g = torch.Generator().manual_seed(0)
    feats = Packed(torch.randn(4 + 15, 32, generator=g), tuple(grids))
    out = sup.generate(feats, prompts, max_new_tokens=4)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    with torch.no_grad():  # the KV-cache loop equals recomputing the whole sequence
        emb = sup.embed(torch.tensor([prompts[2].input_ids]), sup.projector(feats)[1:],
                        prompts[2].image_tokens)
        assert out[2] == greedy_without_cache(sup, emb, sup._stop_ids(), 4)
    blind = sup.generate(None, prompts, max_new_tokens=4, blind=True)
    assert len(blind) == 3 and blind[1] == out[1]  # the text-only prompt is unchanged
    with pytest.raises(ValueError, match="images"):
        sup.generate(None, prompts, max_new_tokens=2)


def test_llm_config_round_trip_and_validation():
    cfg = LLMConfig(adapter="dora", rank=4, targets=("q_proj", "v_proj"))
    assert from_dict(LLMConfig, to_dict(cfg)) == cfg
    cfg2 = override(cfg, ["adapter=lora", "targets=q_proj,k_proj", "dtype=bf16", "alpha=8"])
    assert cfg2.targets == ("q_proj", "k_proj") and cfg2.dtype == "bf16" and cfg2.alpha == 8.0
    with pytest.raises(ValueError, match="'llm.rank'"):
        LLMConfig(rank=0)
    with pytest.raises(ValueError, match="'llm.targets'"):
        LLMConfig(targets=("q_proj", "lm_head"))
    with pytest.raises(ValueError, match="'adapter'"):
        override(LLMConfig(), ["adapter=qlora"])
    with pytest.raises(FileNotFoundError, match="'llm.source'"):
        TextSupervision(LLMConfig(source="/nonexistent/llm"), 8)


@pytest.mark.slow
def test_smollm2_lora_two_steps():
    """The real SmolLM2-135M with LoRA: two optimizer steps on a tiny packed batch."""
    pytest.importorskip("gguf")
    torch.manual_seed(0)
    sup = TextSupervision(LLMConfig(source="smollm2", rank=8), feature_dim=32)
    assert sup.projector.llm_dim == 576
    feats, batch = make_batch(sup.tokenizer)
    params = [p for p in sup.parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("projector.")
               for n, p in sup.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=1e-3)
    sup.train()
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = sup(feats, batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    with torch.no_grad():
        assert float(sup.eval()(feats, batch)) < losses[0]
    prompt = tokenize_prompt(sup.tokenizer, "<image>\nWhat is it?", [(2, 2)])
    out = sup.generate(Packed(feats.tokens[:4], ((2, 2),)), [prompt], max_new_tokens=4)
    assert isinstance(out[0], str)


@pytest.mark.slow
def test_smollm2_first_load_draws_what_a_cached_load_draws(tmp_path):
    """Converting SmolLM2 from its GGUF (the first run on a machine) leaves the global RNG as a
    load from the cache does: a demo's first run trains like every later one."""
    pytest.importorskip("gguf")
    from viq.backends.llm import smollm2

    draws = []
    for _ in range(2):  # the first call converts into tmp_path, the second reads it back
        torch.manual_seed(0)
        smollm2(cache_dir=tmp_path / "smollm2")
        draws.append(torch.rand(4))
    assert torch.equal(draws[0], draws[1])


def test_keep_layers_cuts_the_lm_and_generation_still_matches():
    """``llm.keep_layers``: the kept layers run in order (the cut LM equals running those
    layers of the full one by hand), the KV cache follows the new numbering, bad indices are
    named."""
    torch.manual_seed(0)
    cfg = LLMConfig(adapter="none", layers=4)
    full = TextSupervision(cfg, feature_dim=32).eval()
    torch.manual_seed(0)
    cut = TextSupervision(override(cfg, ["keep_layers=[0,3]"]), feature_dim=32).eval()
    assert len(cut.llm.model.layers) == 2 and cut.llm.config.num_hidden_layers == 2
    for a, b in zip(cut.llm.model.layers, [full.llm.model.layers[i] for i in (0, 3)],
                    strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                     b.state_dict().values(), strict=True))
    ids = torch.tensor([cut.tokenizer.encode("a red square on the left")])
    with torch.no_grad():  # the reference: layers 0 and 3 of the full LM, by hand
        base = full.llm.model
        h = base.embed_tokens(ids)
        pos = torch.arange(ids.shape[1])[None]
        rope = base.rotary_emb(h, pos)
        mask = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)[None, None]
        for i in (0, 3):
            h = base.layers[i](h, attention_mask=mask, position_ids=pos,
                               position_embeddings=rope)
            h = h[0] if isinstance(h, tuple) else h
        want = full.llm.lm_head(base.norm(h))
        got = cut.llm(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    prompt = tokenize_prompt(cut.tokenizer, "Say hi.")
    out = cut.generate(None, [prompt], max_new_tokens=4)
    with torch.no_grad():
        emb = cut.llm.get_input_embeddings()(torch.tensor([prompt.input_ids]))
        assert out[0] == greedy_without_cache(cut, emb, cut._stop_ids(), 4)
    with pytest.raises(ValueError, match="out of range"):
        TextSupervision(override(cfg, ["keep_layers=[0,4]"]), feature_dim=32)
    with pytest.raises(ValueError, match="'llm.keep_layers'"):
        override(cfg, ["keep_layers=[1,1]"])
