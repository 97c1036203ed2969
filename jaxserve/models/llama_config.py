"""Architecture hyperparameters of the Llama family, read from a Hugging Face config.json.

Llama, SmolLM, Mistral and Qwen2 differ only in a few switches here: qkv bias (Qwen2), tied
embeddings (SmolLM), sliding window (Mistral) and the RoPE scaling rule (Llama 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class RopeScaling(msgspec.Struct, kw_only=True):
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


class LlamaConfig(msgspec.Struct, kw_only=True, frozen=True):
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections carry a bias (Qwen2)
    sliding_window: int | None = None
    rope_scaling: RopeScaling | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, folder: str | Path) -> "LlamaConfig":
        raw = json.loads((Path(folder) / "config.json").read_text())
        model_type = raw.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported; jaxserve serves {SUPPORTED_MODEL_TYPES}"
            )
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        scaling = raw.get("rope_scaling")
        if scaling:
            scaling = dict(scaling)
            scaling["rope_type"] = scaling.pop("type", scaling.get("rope_type", "default"))
            scaling = msgspec.convert(scaling, RopeScaling, strict=False)
        use_sliding = raw.get("use_sliding_window", model_type == "mistral")
        heads = raw["num_attention_heads"]
        return cls(
            model_type=model_type,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads", heads),
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=raw.get("rope_theta", 10000.0),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=raw.get("tie_word_embeddings", model_type == "llama"),
            attention_bias=raw.get("attention_bias", model_type == "qwen2"),
            sliding_window=raw.get("sliding_window") if use_sliding else None,
            rope_scaling=scaling if scaling and scaling.rope_type != "default" else None,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )
