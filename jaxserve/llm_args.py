"""``jaxserve.LLM``'s arguments as vLLM users write them, to one ``Config`` (host side, no jax).

``LLM(model="smollm2-135m-instruct", dtype="float32", max_model_len=512)`` takes vLLM's keyword
names, each mapped to its config field below; a config file stays accepted, as the first argument
or as ``config=``; dotted config fields (``**{"model.max_model_len": 512}``) work too and win
over both. An unknown keyword is a TypeError naming it, as a Python function's would be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from jaxserve.config import Config, load_config

# vLLM's LLM(...) keyword -> the config field it sets; then jaxserve's own, as `jaxserve run` names
# them
KEYWORDS = {
    "model": "model.path",
    "served_model_name": "model.served_model_name",
    "dtype": "model.dtype",
    "max_model_len": "model.max_model_len",
    "seed": "model.seed",
    "tensor_parallel_size": "parallel.tensor_parallel_size",
    "max_num_seqs": "scheduler.max_num_seqs",
    "max_num_batched_tokens": "scheduler.max_num_batched_tokens",
    "async_scheduling": "scheduler.async_scheduling",
    "speculative_config": "scheduler.speculative_config",
    "kv_cache_dtype": "cache.dtype",
    "block_size": "cache.page_size",
    "enable_prefix_caching": "cache.enable_prefix_caching",
    "num_gpu_blocks_override": "cache.num_pages",
    "weight_dtype": "model.weight_dtype",
    "attention_backend": "model.attention_backend",
    "layers_per_call": "model.layers_per_call",
    "chat_template": "model.chat_template",
}
_CONFIG_SUFFIXES = (".yaml", ".yml")


def _is_config_file(value: str | Path) -> bool:
    path = Path(value)
    return not path.is_dir() and (path.suffix in _CONFIG_SUFFIXES or path.is_file())


def _value(keyword: str, value: Any) -> Any:
    """vLLM's spellings that mean "the default" or take a list where jaxserve takes one."""
    if keyword == "dtype" and value == "auto":
        return None  # the config's dtype
    if keyword == "served_model_name" and isinstance(value, (list, tuple)):
        return value[0] if value else None
    if keyword == "model" and isinstance(value, Path):
        return str(value)
    return value


def _flatten(config: Config) -> dict[str, Any]:
    """A built config as dotted fields, so keywords can be laid over it."""
    return {f"{section}.{field}": value
            for section, fields in msgspec.to_builtins(config).items()
            for field, value in fields.items()}


def resolve_config(model: Config | str | Path | None, config: Config | str | Path | None,
                   kwargs: dict[str, Any]) -> Config:
    """The first argument is a Config, a config file, or (a folder, a model name) ``model=``."""
    if model is not None and (isinstance(model, Config) or _is_config_file(model)):
        if config is not None:
            raise TypeError("LLM() got a config both as its first argument and as config=")
        model, config = None, model
    overrides: dict[str, Any] = {}
    if model is not None:
        overrides["model.path"] = _value("model", model)
    for keyword, value in kwargs.items():
        if "." in keyword:
            continue
        if keyword not in KEYWORDS:
            raise TypeError(f"LLM() got an unexpected keyword argument {keyword!r}; it takes "
                            f"{', '.join(KEYWORDS)}, config=, or dotted config fields")
        if keyword == "model" and "model.path" in overrides:
            raise TypeError("LLM() got the model both as its first argument and as model=")
        overrides[KEYWORDS[keyword]] = _value(keyword, value)
    overrides.update({k: v for k, v in kwargs.items() if "." in k})
    if isinstance(config, Config):
        return load_config(None, {**_flatten(config), **overrides}) if overrides else config
    return load_config(config, overrides)
