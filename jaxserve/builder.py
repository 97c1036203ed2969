"""Assemble an engine from a config: resolve the model, load tokenizer and weights, compile."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from jaxserve.config import Config, ConfigError
from jaxserve.engine.buckets import all_buckets, decode_buckets, prompt_logprob_buckets
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.engine.step_inputs import StepInputBuilder
from jaxserve.gc_policy import collector_paused, freeze_imports
from jaxserve.hardware import CpuInfo, DtypeChoice, choose_dtypes
from jaxserve.interfaces import EngineInfo


def _log(message: str, progress: bool) -> None:
    if progress:
        print(f"[jaxserve] {message}", file=sys.stderr, flush=True)


# tokenizer_config.json classes that AutoTokenizer maps to the plain tokenizers backend, which a
# tokenizer.json (with tokenizer_config.json) describes completely
_PLAIN_TOKENIZER_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend", "GPT2Tokenizer",
                            "GPT2TokenizerFast"}


def load_tokenizer(model_dir: Path, chat_template: str | None = None):
    """transformers' tokenizer for the folder, as AutoTokenizer loads it.

    AutoTokenizer goes through transformers' config machinery, which imports torch whenever torch
    is installed, a cost in seconds and RSS at every server start for a library the server never
    calls. For a plain tokenizers-backend folder PreTrainedTokenizerFast is the very
    class AutoTokenizer returns, and it loads without that import; other tokenizer classes (their
    own post-processing rules) still go through AutoTokenizer.
    """
    model_dir = Path(model_dir)
    config_file = model_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    if (model_dir / "tokenizer.json").exists() and config.get("tokenizer_class") in _PLAIN_TOKENIZER_CLASSES:
        from transformers import PreTrainedTokenizerFast as loader
    else:
        from transformers import AutoTokenizer as loader
    tokenizer = loader.from_pretrained(str(model_dir))
    if chat_template:
        path = Path(chat_template)
        tokenizer.chat_template = path.read_text() if path.is_file() else chat_template
    return tokenizer


def eos_ids(model_dir: Path, tokenizer, config_eos: tuple[int, ...]) -> tuple[int, ...]:
    """Union of the eos ids of config.json, generation_config.json and the tokenizer."""
    ids = set(config_eos)
    gen = model_dir / "generation_config.json"
    if gen.exists():
        value = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(value if isinstance(value, list) else ([value] if value is not None else []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))


def build_engine(config: Config, progress: bool = True, *,
                 freeze: bool = False) -> tuple[LLMEngine, EngineInfo]:
    """Weights load on a thread of their own while this one lowers every bucket from the
    model's shapes (or loads it, program_cache.py) and then loads the tokenizer, and while
    worker threads have XLA compile (or load from its cache) what was lowered. No garbage
    collection runs meanwhile; with ``freeze`` (the server's one engine) what the build leaves
    is frozen (gc_policy.py)."""
    with collector_paused(freeze=freeze):
        return _build_engine(config, progress)


def resolve_dtypes(config: Config) -> tuple[Config, DtypeChoice]:
    """The config with ``auto`` dtypes made concrete for the first device (hardware.py)."""
    import jax

    device = jax.devices()[0]
    dtypes = choose_dtypes(config.model.dtype, config.model.weight_dtype, config.cache.dtype,
                           jax.default_backend(), cpu=CpuInfo.read(),
                           compute_capability=getattr(device, "compute_capability", None))
    model = msgspec.structs.replace(config.model, weight_dtype=dtypes.weights)
    cache = msgspec.structs.replace(config.cache, dtype=dtypes.kv_cache)
    return msgspec.structs.replace(config, model=model, cache=cache), dtypes


def _build_engine(config: Config, progress: bool) -> tuple[LLMEngine, EngineInfo]:
    from jaxserve.models.llama_config import LlamaConfig
    from jaxserve.models.loader import load_weights
    from jaxserve.pull import resolve_model
    from jaxserve.runner import distributed
    from jaxserve.runner.attention import make_attention_backend
    from jaxserve.runner.compile_cache import backend_compile_count, enable_persistent_cache
    from jaxserve.runner.model_runner import ModelRunner
    from jaxserve.runner.sharding import abstract_sharded_model
    from jaxserve.structured import GrammarBackend

    distributed.initialize(config.parallel)  # before jax touches a device
    freeze_imports()
    xla_cache = enable_persistent_cache()
    backend_compile_count()  # install the listener before the first compilation
    start = time.perf_counter()
    model_dir = resolve_model(config.model.path)
    model_cfg = LlamaConfig.from_hf(model_dir)
    max_model_len = config.model.max_model_len or model_cfg.max_position_embeddings
    if max_model_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"model.max_model_len: {max_model_len} exceeds the model's "
                         f"max_position_embeddings {model_cfg.max_position_embeddings}")
    backend = make_attention_backend(config.model.attention_backend)
    config, dtypes = resolve_dtypes(config)
    tp = config.parallel.tensor_parallel_size
    _log(f"loading {model_dir} ({dtypes.activations}, {dtypes.weights} weights, "
         f"{dtypes.kv_cache} K/V ({dtypes.reason}), attention={backend.name}, "
         f"tensor parallel {tp})", progress)
    sharded = abstract_sharded_model(model_dir, backend, model_cfg, tp, config.model.dtype,
                                     config.model.weight_dtype)
    abstract = sharded.model
    load_seconds = 0.0

    def load():
        nonlocal load_seconds
        model = load_weights(model_dir, abstract, kv_repeats=sharded.heads.kv_repeats)
        load_seconds = time.perf_counter() - start
        _log(f"weights loaded in {load_seconds:.1f}s", progress)
        return model

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxserve-weights") as loader:
        loading = loader.submit(load)
        sched = config.scheduler
        runner = ModelRunner(abstract, num_pages=config.cache.num_pages,
                             page_size=config.cache.page_size, max_num_seqs=sched.max_num_seqs,
                             max_rows=sched.seq_buckets[-1], num_decode_steps=sched.num_decode_steps,
                             layers_per_call=config.model.layers_per_call,
                             # stored programs are single-device ones; a mesh re-traces its own
                             program_dir=None if xla_cache is None or sharded.mesh is not None
                             else xla_cache / "programs",
                             kv_dtype=dtypes.kv_cache,
                             mesh=sharded.mesh)
        # the buckets' shapes need no tokenizer: lower them now, and load the tokenizer while
        # XLA compiles (or loads) them on worker threads; the engine then builds its steps with
        # the same builder, its eos ids (values, never shapes) from the tokenizer too
        shapes = StepInputBuilder.for_config(config, max_model_len=max_model_len,
                                             vocab_size=model_cfg.vocab_size,
                                             eos_token_ids=model_cfg.eos_token_ids)
        buckets = all_buckets(sched.token_buckets, sched.seq_buckets)
        padding = [shapes.padding_inputs(b) for b in buckets]
        if sched.num_decode_steps > 1:
            widest = min(sched.max_num_seqs, sched.multi_step_max_seqs or sched.max_num_seqs)
            padding += [shapes.padding_inputs(b, sched.num_decode_steps)
                        for b in decode_buckets(sched.token_buckets, sched.seq_buckets, widest)]
        if config.parallel.nnodes == 1:  # a step's prompt-logprob variant (not across processes)
            padding += [shapes.padding_inputs(b, with_prompt_logprobs=True)
                        for b in prompt_logprob_buckets(sched.token_buckets, sched.seq_buckets)]
        if config.parallel.nnodes > 1:  # rank 0 sends its steps; the others receive them
            runner.channel = distributed.StepChannel(shapes.padding_inputs)
        runner.start_warmup(padding, progress)
        tokenizer = load_tokenizer(model_dir, config.model.chat_template)
        eos = eos_ids(model_dir, tokenizer, model_cfg.eos_token_ids)
        engine = LLMEngine(config, runner, tokenizer, max_model_len=max_model_len,
                           vocab_size=model_cfg.vocab_size, eos_token_ids=eos,
                           constraint_factory=GrammarBackend(tokenizer, model_cfg.vocab_size, eos),
                           inputs=shapes)
        compile_seconds = runner.finish_warmup(weights=loading.result)
    _log(f"{len(buckets)} buckets ready in {time.perf_counter() - start:.1f}s from the start", progress)
    info = EngineInfo(model_dir, config.model.model_name, max_model_len, model_cfg.vocab_size,
                      eos, backend.name, load_seconds, compile_seconds, dtypes)
    return engine, info
