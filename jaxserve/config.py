"""Configuration: msgspec Structs validated when built, loaded from YAML (host side, no jax).

A config file has five sections, ``model``, ``cache``, ``scheduler``, ``parallel`` and ``server``
(each may be left out); every field
has a default, so ``{}`` is a valid file. Errors name the offending field, e.g.
``scheduler.max_num_seqs: must be at least 1, got 0``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml


class ConfigError(ValueError):
    """A config value is invalid; the message starts with the dotted field name."""


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")


def _ladder(values: list[int], field: str) -> None:
    _check(len(values) > 0, field, "must not be empty")
    _check(all(v >= 1 for v in values), field, f"must be positive integers, got {values}")
    _check(values == sorted(set(values)), field, f"must be strictly ascending, got {values}")


class ModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # a name known to `jaxserve pull` (fetched on first use) or a local Hugging Face folder
    path: str = "smollm2-135m-instruct"
    served_model_name: str | None = None  # the id clients send; defaults to `path`
    dtype: Literal["float32", "bfloat16"] = "float32"  # activations and K/V cache
    # stored weights; None: the same as dtype; auto: bfloat16 where the hardware multiplies it
    # natively, else float32 (hardware.py). bfloat16 under float32 activations is mixed
    # precision (bf16 dot inputs, f32 accumulation): half the weight bytes, see docs/performance.md;
    # int8: per-channel int8 weights under activations quantized per token (models/layers.py)
    weight_dtype: Literal["auto", "float32", "bfloat16", "int8"] | None = None
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    attention_backend: Literal["pallas", "reference", "auto"] = "auto"
    # decoder layers per compiled program; None: the whole model is one program per bucket. A
    # divisor of the layer count runs each step as embed, layers/layers_per_call calls of one
    # layer-group program, and head: much smaller executables (start time, RSS) for one dispatch
    # per call (docs/performance.md). Needs scheduler.num_decode_steps: 1
    layers_per_call: int | None = None
    chat_template: str | None = None  # a Jinja template, or a path to one
    seed: int = 0  # seeds the engine's RNG for requests that give no seed

    def __post_init__(self) -> None:
        if self.max_model_len is not None:
            _check(self.max_model_len >= 1, "model.max_model_len",
                   f"must be at least 1, got {self.max_model_len}")
        if self.layers_per_call is not None:
            _check(self.layers_per_call >= 1, "model.layers_per_call",
                   f"must be at least 1 (or null), got {self.layers_per_call}")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.path


class CacheConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    page_size: int = 16  # tokens per KV page
    num_pages: int = 1024  # pages in the whole cache, shared by all sequences
    enable_prefix_caching: bool = True  # reuse the K/V of full pages of a prompt seen before
    # K/V as stored (vLLM's --kv-cache-dtype); auto: the weights' dtype (under int8 weights, the
    # float dtype weight_dtype auto would pick). bfloat16 under float32
    # activations halves the cache and the bytes each attention step reads
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    def kv_dtype(self, weight_dtype: str) -> str:
        """weight_dtype: the weights' resolved dtype (hardware.choose_dtypes)."""
        return weight_dtype if self.dtype == "auto" else self.dtype

    def __post_init__(self) -> None:
        _check(self.page_size >= 1 and self.page_size & (self.page_size - 1) == 0,
               "cache.page_size", f"must be a power of two, got {self.page_size}")
        _check(self.num_pages >= 2, "cache.num_pages", f"must be at least 2, got {self.num_pages}")


class SpeculativeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """vLLM's ``--speculative-config`` for prompt lookup (engine/speculation.py)."""

    method: Literal["ngram", "[ngram]"] = "ngram"
    num_speculative_tokens: int  # drafts proposed per step, at most
    # the n-gram sizes looked up (the longest that matches wins); vLLM's defaults: a missing
    # bound takes the other's value, both missing are 5
    prompt_lookup_min: int | None = None
    prompt_lookup_max: int | None = None
    # no drafts while more sequences than this run (vLLM's field): a wide batch is compute bound
    disable_by_batch_size: int | None = None

    def __post_init__(self) -> None:
        field = "scheduler.speculative_config"
        self.method = "ngram"
        if self.prompt_lookup_min is None:
            self.prompt_lookup_min = self.prompt_lookup_max or 5
        if self.prompt_lookup_max is None:
            self.prompt_lookup_max = self.prompt_lookup_min
        _check(1 <= self.num_speculative_tokens <= 16, f"{field}.num_speculative_tokens",
               f"must be in [1, 16], got {self.num_speculative_tokens}")
        _check(1 <= self.prompt_lookup_min <= self.prompt_lookup_max, f"{field}.prompt_lookup_min",
               f"must be at least 1 and at most prompt_lookup_max ({self.prompt_lookup_max}), "
               f"got {self.prompt_lookup_min}")
        _check(self.prompt_lookup_max <= 64, f"{field}.prompt_lookup_max",
               f"must be at most 64, got {self.prompt_lookup_max}")
        _check(self.disable_by_batch_size is None or self.disable_by_batch_size >= 1,
               f"{field}.disable_by_batch_size",
               f"must be at least 1 (or null), got {self.disable_by_batch_size}")


class SchedulerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_num_seqs: int = 16  # sequences in one step
    max_num_batched_tokens: int = 256  # tokens in one step: the prefill chunk budget
    # padded sizes the jitted step is compiled for; each run pads up to the nearest rung
    token_buckets: list[int] = msgspec.field(default_factory=lambda: [16, 64, 256])
    seq_buckets: list[int] = msgspec.field(default_factory=lambda: [4, 16])
    # decode-only batches run this many steps per host round trip (1 disables); tokens past a
    # stop are computed and dropped, so larger values waste more at the end of a request
    num_decode_steps: int = 4
    # ... but only for batches of at most this many sequences (None: any size)
    multi_step_max_seqs: int | None = None
    # schedule step N+1 while step N runs on the device (the device feeds step N's tokens to it);
    # falls back to one step at a time around grammars, penalties and n>1 forks
    async_scheduling: bool = True
    # prompt-lookup speculative decoding (vLLM's --speculative-config); None: off
    speculative_config: SpeculativeConfig | None = None

    def __post_init__(self) -> None:
        _check(self.max_num_seqs >= 1, "scheduler.max_num_seqs",
               f"must be at least 1, got {self.max_num_seqs}")
        _check(self.max_num_batched_tokens >= 1, "scheduler.max_num_batched_tokens",
               f"must be at least 1, got {self.max_num_batched_tokens}")
        _check(1 <= self.num_decode_steps <= 64, "scheduler.num_decode_steps",
               f"must be in [1, 64], got {self.num_decode_steps}")
        _check(self.multi_step_max_seqs is None or self.multi_step_max_seqs >= 1,
               "scheduler.multi_step_max_seqs",
               f"must be at least 1 (or null), got {self.multi_step_max_seqs}")
        _ladder(self.token_buckets, "scheduler.token_buckets")
        _ladder(self.seq_buckets, "scheduler.seq_buckets")
        _check(self.token_buckets[-1] >= self.max_num_batched_tokens, "scheduler.token_buckets",
               f"largest rung {self.token_buckets[-1]} must cover max_num_batched_tokens "
               f"{self.max_num_batched_tokens}")
        _check(self.seq_buckets[-1] >= self.max_num_seqs, "scheduler.seq_buckets",
               f"largest rung {self.seq_buckets[-1]} must cover max_num_seqs {self.max_num_seqs}")


class ParallelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # devices the model is split over (vLLM's --tensor-parallel-size): weights Megatron-style,
    # the K/V cache over KV heads, see docs/scaling.md; it must divide the attention heads
    tensor_parallel_size: int = 1
    # processes (hosts) that share one mesh through jax.distributed (vLLM's --nnodes); rank 0
    # serves HTTP and leads, the others run its steps on their devices (docs/scaling.md)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"  # rank 0's address, where jax.distributed coordinates
    master_port: int = 29500
    # seconds without a heartbeat after which a lost process fails the others
    heartbeat_timeout: int = 10

    def __post_init__(self) -> None:
        _check(self.tensor_parallel_size >= 1, "parallel.tensor_parallel_size",
               f"must be at least 1, got {self.tensor_parallel_size}")
        _check(self.nnodes >= 1, "parallel.nnodes", f"must be at least 1, got {self.nnodes}")
        _check(0 <= self.node_rank < self.nnodes, "parallel.node_rank",
               f"must be in [0, {self.nnodes}), got {self.node_rank}")
        _check(0 < self.master_port <= 65535, "parallel.master_port",
               f"must be in [1, 65535], got {self.master_port}")
        _check(self.heartbeat_timeout >= 1, "parallel.heartbeat_timeout",
               f"must be at least 1, got {self.heartbeat_timeout}")


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # also read from JAXSERVE_API_KEY
    # waiting requests past which new ones get 503 + Retry-After; None: 64 x max_num_seqs, since
    # load generators send bursts and vLLM queues them all
    max_waiting_requests: int | None = None
    max_body_bytes: int = 10 * 2**20  # a larger body is 413
    # JSON nesting of a body; the decoder recurses per level, so an unbounded depth is a crash
    max_nesting_depth: int = 128
    max_prompts_per_request: int = 256  # completions' `prompt` list
    max_request_id_length: int = 256
    max_stop_strings: int = 64
    max_stop_string_length: int = 1024  # characters
    # seconds a SIGTERM waits for requests in flight before the server exits; None: no bound
    drain_timeout: float | None = None
    log_requests: bool = True  # one jaxserve.access line per request
    # /v1/responses kept for previous_response_id and GET: a bounded count, oldest evicted, and
    # seconds each is kept, so the memory they take stays bounded
    responses_store_size: int = 1024
    responses_store_ttl: float = 3600.0
    # render a chat template sent in a request; off, as in vLLM, since a template is code that
    # runs on the tokenizer thread every request shares
    trust_request_chat_template: bool = False

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "server.port", f"must be in [0, 65535], got {self.port}")
        if self.max_waiting_requests is not None:
            _check(self.max_waiting_requests >= 1, "server.max_waiting_requests",
                   f"must be at least 1 (or null), got {self.max_waiting_requests}")
        for name in ("max_body_bytes", "max_nesting_depth", "max_prompts_per_request",
                     "max_request_id_length", "max_stop_strings", "max_stop_string_length"):
            value = getattr(self, name)
            _check(value >= 1, f"server.{name}", f"must be at least 1, got {value}")
        if self.drain_timeout is not None:
            _check(self.drain_timeout > 0, "server.drain_timeout",
                   f"must be positive (or null), got {self.drain_timeout}")
        _check(self.responses_store_size >= 0, "server.responses_store_size",
               f"must be at least 0 (0 keeps none), got {self.responses_store_size}")
        _check(self.responses_store_ttl > 0, "server.responses_store_ttl",
               f"must be positive, got {self.responses_store_ttl}")


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = msgspec.field(default_factory=ParallelConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        _check(self.scheduler.max_num_seqs <= self.cache.num_pages, "scheduler.max_num_seqs",
               f"({self.scheduler.max_num_seqs}) cannot exceed cache.num_pages "
               f"({self.cache.num_pages})")
        _check(self.model.layers_per_call is None or self.scheduler.num_decode_steps == 1,
               "model.layers_per_call", "runs a step as several calls, so it needs "
               f"scheduler.num_decode_steps: 1 (got {self.scheduler.num_decode_steps})")


def _convert(data: dict[str, Any]) -> Config:
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Expected `int`, got `str` - at `$.scheduler.max_num_seqs`"
        what, _, where = str(exc).partition(" - at `$")
        where = where.rstrip("`").lstrip(".")
        unknown = re.match(r"Object contains unknown field `(.+)`", what)
        if unknown:
            field = f"{where}.{unknown.group(1)}" if where else unknown.group(1)
            raise ConfigError(f"{field}: unknown field") from None
        if what.split(":", 1)[0].count(".") >= 1:  # our own __post_init__ message names the field
            raise ConfigError(what) from None
        raise ConfigError(f"{where or 'config'}: {what}") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config, apply dotted overrides (``{"model.max_model_len": 512}``), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return _convert(data)
