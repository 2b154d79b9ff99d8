"""Architecture-only builds of the supervision sources, for dry runs (``viq train --dry-run``).

With ``meta=True`` the builders (`viq.supervision.text.build_llm`,
`viq.supervision.distill.build_teacher`, `viq.supervision.latent.build_vae`) construct each
module's architecture without reading any weight file; the caller builds under
``with torch.device("meta")`` so no memory is allocated. The shapes come from:

- LLM: ``tiny`` / ``smollm2`` built in; a folder with ``config.json`` → that config (JSON only);
  a folder that does not exist → `KNOWN_LLMS`, matched by folder name (``Qwen2.5-0.5B-Instruct``
  → ``qwen2.5-0.5b``). No tokenizer is built (``None``).
- teacher: always ``teacher.encoder`` (the paper presets set SigLIP2-g's shape there).
- VAE: the tiny sources as built; a diffusers folder with ``config.json`` → its class and config;
  otherwise diffusers' ``AutoencoderKLQwenImage()`` defaults, which are the Qwen-Image VAE's
  (base 96, z 16, multipliers 1, 2, 4, 4; 127M parameters).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from viq.config import DTYPES
from viq.supervision.config import LLMConfig, VAEConfig

QWEN2_VOCAB = 151_646  # viq.backends.llm.qwen2_tokenizer: 151,643 ranks + 3 specials

# Published configs (config.json of each model); keys are lowercase folder-name prefixes
KNOWN_LLMS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                         vocab_size=151_936, tie_word_embeddings=True, rope_theta=1_000_000.0,
                         max_position_embeddings=32_768, rms_norm_eps=1e-6),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960,
                         vocab_size=151_936, tie_word_embeddings=True, rope_theta=1_000_000.0,
                         max_position_embeddings=32_768, rms_norm_eps=1e-6),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                         vocab_size=49_152, tie_word_embeddings=True, rope_theta=100_000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5),
}


def known_llm(source: str) -> dict | None:
    """The `KNOWN_LLMS` entry whose key starts the folder name of ``source`` (or None)."""
    name = Path(source).name.lower()
    return next((cfg for key, cfg in KNOWN_LLMS.items() if name.startswith(key)), None)


def meta_llm(cfg: LLMConfig) -> nn.Module:
    """The causal LM of ``cfg`` built from its configuration only (see the module docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.source == "tiny":
        from viq.backends.llm import tiny_qwen2

        return tiny_qwen2(QWEN2_VOCAB, cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads,
                          cfg.seed).to(DTYPES[cfg.dtype])
    folder = Path(cfg.source)
    if (folder / "config.json").is_file():
        hf = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    else:
        known = known_llm("smollm2-135m" if cfg.source == "smollm2" else cfg.source)
        if known is None:
            raise ValueError(f"config field 'llm.source': {cfg.source} has no config.json and is "
                             f"not a known architecture ({', '.join(KNOWN_LLMS)}); a dry run "
                             "needs one of the two")
        known = dict(known)
        hf = AutoConfig.for_model(known.pop("model_type"), **known)
    return AutoModelForCausalLM.from_config(hf, dtype=DTYPES[cfg.dtype])


def meta_vae(cfg: VAEConfig) -> nn.Module:
    """The diffusers VAE of a folder ``cfg.source`` from its config.json, or the Qwen-Image VAE's
    architecture when the folder is absent."""
    import diffusers

    cfg_file = Path(cfg.source) / "config.json"
    if cfg_file.is_file():
        conf = json.loads(cfg_file.read_text())
        cls = getattr(diffusers, conf.get("_class_name", ""), None)
        if cls is None or not cls.__name__.startswith("AutoencoderKL"):
            raise ValueError(f"{cfg_file}: _class_name {conf.get('_class_name')!r} is not a "
                             "diffusers AutoencoderKL* class")
        return cls.from_config(conf)
    return diffusers.AutoencoderKLQwenImage()
