"""The device boundary: numpy step inputs in, numpy sampled tokens out.

The runner owns the model weights and the paged KV cache (one array per layer, donated to every
step so XLA updates it in place). Each (token bucket, sequence bucket) pair has one executable,
compiled ahead of time at start (with ``layers_per_call``, a ``GroupedStep`` of three smaller
ones, see layer_groups.py), and decode-only buckets have a second one that runs
``num_decode_steps`` steps in a ``lax.scan``, feeding each step's tokens to the next on the device;
a step that finds no executable compiles it and counts it, so a steady state with zero
compilations after warm-up can be checked.

``launch`` only dispatches (JAX runs the step asynchronously) and ``fetch`` waits for its tokens,
so the engine can launch step N+1 before fetching step N. Each step leaves its last sampled token
per sample row on the device (``last_tokens``); the next step's ``prev_rows`` pick its input
tokens from there, so that hand-over never visits the host.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxserve.config import ConfigError
from jaxserve.interfaces import PromptLogprobResult, StepInputs, StepResult
from jaxserve.models.attention_metadata import AttentionMetadata
from jaxserve.models.llama import LlamaForCausalLM
from jaxserve.models.loader import is_abstract
from jaxserve.runner.compile_cache import backend_compile_count, release_free_memory
from jaxserve.runner.layer_groups import LayerGroups
from jaxserve.runner.program_cache import ProgramCache, describe_function
from jaxserve.runner.prompt_logprobs import prompt_logprobs_step_program
from jaxserve.runner.sharding import kv_cache_sharding, replicated
from jaxserve.runner.step_programs import (
    KV_CACHES_ARG,
    copy_pages_program,
    decode_steps_program,
    one_step_program,
)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, *, num_pages: int, page_size: int,
                 max_num_seqs: int, max_rows: int, num_decode_steps: int = 1,
                 layers_per_call: int | None = None, program_dir: Path | None = None,
                 kv_dtype=None, mesh: Mesh | None = None):
        """program_dir: where lowered programs are kept between starts (program_cache.py);
        None: every start traces them. kv_dtype: the K/V cache's (None: the activations').
        mesh: the tensor-parallel mesh the model's weights are sharded over (runner/sharding.py);
        None: one device."""
        cfg = model.cfg
        self.cfg = cfg
        backend = model.layers[0].self_attn.backend
        kv_storage = backend.kv_storage_dtype(model.dtype if kv_dtype is None else kv_dtype)
        self.programs = ProgramCache(program_dir, "|".join(map(str, (
            repr(cfg), model.dtype, kv_storage, describe_function(backend.attention),
            describe_function(backend.update_kv), page_size, max_rows, num_decode_steps,
            layers_per_call))))
        self.graphdef, self.state = nnx.split(model)
        # [num_pages, 2, Hkv, page_size, D] per layer, in the backend's storage dtype for the
        # cache's dtype; allocated with the weights (attach_weights), lowered from this spec before
        self.mesh = mesh
        # step inputs and the hand-over tokens: on every device of the mesh, whole
        self.input_sharding = None if mesh is None else replicated(mesh)
        self.kv_spec = jax.ShapeDtypeStruct(
            (num_pages, 2, cfg.num_key_value_heads, page_size, cfg.head_dim), kv_storage,
            sharding=None if mesh is None else kv_cache_sharding(mesh))
        self.kv_caches: list[jax.Array] | None = None
        self.channel = None  # a StepChannel when the mesh spans processes (runner/distributed.py)
        # i32[R]: the last token each sample row of the latest step drew; R = the widest bucket
        self.last_tokens = jnp.zeros(max_rows, jnp.int32, device=self.input_sharding)
        self.num_pages = num_pages
        self.max_copies = max_num_seqs
        # (bucket, decode steps) -> executable; a prompt-logprob variant's key ends "prompt_logprobs"
        self.executables: dict[tuple, object] = {}
        self.compilations_after_warmup = 0
        self._warm = False
        self.num_decode_steps = num_decode_steps
        self.step_fn = one_step_program(self.graphdef, max_rows)
        self.prompt_logprobs_step_fn = prompt_logprobs_step_program(self.graphdef, max_rows)
        self.decode_steps_fn = decode_steps_program(self.graphdef, max_rows, page_size,
                                                    num_decode_steps)
        self._copy_pages = copy_pages_program()

        # one-step buckets as embed + layer-group + head programs (runner/layer_groups.py)
        self.layer_groups = None
        if layers_per_call is not None and cfg.num_hidden_layers % layers_per_call:
            raise ConfigError(f"model.layers_per_call: {layers_per_call} must divide the "
                             f"model's {cfg.num_hidden_layers} layers")
        if layers_per_call is not None and layers_per_call < cfg.num_hidden_layers:
            if num_decode_steps > 1:
                raise ConfigError("model.layers_per_call splits a step into several calls; it "
                                  "needs scheduler.num_decode_steps: 1")
            self.layer_groups = LayerGroups(model, layers_per_call, max_rows, self.programs,
                                            self.input_sharding)
        if not is_abstract(self.state):
            self.attach_weights(model)

    def attach_weights(self, model: LlamaForCausalLM) -> None:
        """The weights of a runner built from ``loader.abstract_model`` (its programs may be
        lowered and compiled already: they take the weights as arguments), and the K/V cache."""
        graphdef, self.state = nnx.split(model)
        assert graphdef == self.graphdef, "the weights belong to another model"
        if self.layer_groups is not None:
            self.layer_groups.attach_weights(model)
        if self.kv_caches is None:
            spec = self.kv_spec
            self.kv_caches = [jnp.zeros(spec.shape, spec.dtype, device=spec.sharding)
                              for _ in range(self.cfg.num_hidden_layers)]

    # ---- compilation -------------------------------------------------------------------------
    def device_args(self, inputs: StepInputs) -> tuple:
        md = AttentionMetadata(
            slot_mapping=inputs.slot_mapping, kv_lens=inputs.kv_lens,
            page_table=inputs.page_table, cu_q_lens=inputs.cu_q_lens, num_seqs=inputs.num_seqs,
        )
        args = (inputs.input_ids, inputs.prev_rows, inputs.positions, md, inputs.logits_indices,
                inputs.sampling)
        return args if inputs.prompt_logprobs is None else (*args, inputs.prompt_logprobs)

    @staticmethod
    def _key(inputs: StepInputs) -> tuple:
        variant = () if inputs.prompt_logprobs is None else ("prompt_logprobs",)
        return (inputs.bucket, inputs.num_steps, *variant)

    def _lower(self, inputs: StepInputs):
        specs = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                           sharding=self.input_sharding),
            self.device_args(inputs),
        )
        kv = [self.kv_spec] * self.cfg.num_hidden_layers
        if self.layer_groups is not None:
            return self.layer_groups.lower(kv, self.last_tokens, *specs)
        name, fn = (("step", self.step_fn) if inputs.num_steps == 1
                    else ("decode_steps", self.decode_steps_fn))
        if inputs.prompt_logprobs is not None:
            assert inputs.num_steps == 1, "prompt logprobs come from prefill steps"
            name, fn = "step_prompt_logprobs", self.prompt_logprobs_step_fn
        return self.programs.lower(name, fn, (self.state, kv, self.last_tokens, *specs),
                                   donate_argnums=KV_CACHES_ARG)

    def _bind(self, compiled):
        """A compiled step as a call of (kv_caches, last_tokens, *device_args)."""
        if self.layer_groups is not None:
            return compiled  # a GroupedStep reads the weights from the LayerGroups
        return lambda *args: compiled(self.state, *args)  # the weights as attached at the call

    def _compile(self, inputs: StepInputs):
        return self._bind(self._lower(inputs).compile())

    def warmup(self, padding_inputs: list[StepInputs], progress: bool = True,
               weights: Callable[[], LlamaForCausalLM] | None = None) -> float:
        """Compile every bucket ahead of time; returns the seconds it took."""
        self.start_warmup(padding_inputs, progress)
        return self.finish_warmup(weights)

    def start_warmup(self, padding_inputs: list[StepInputs], progress: bool = True) -> None:
        """Lower every bucket here, then return while worker threads compile them.

        Tracing and lowering hold the GIL; XLA's compilation (or, with a warm persistent cache,
        its loading of the executable) does not. So buckets are lowered one after another
        while the workers compile the ones lowered before, and once all are lowered the calling
        thread is free (the builder loads the tokenizer) until ``finish_warmup``. A runner built
        on an abstract model is lowered from shapes alone.
        """
        start = self._warmup_start = time.perf_counter()
        done = itertools.count(1)

        def compile_one(inputs: StepInputs, lowered) -> None:  # on a worker thread
            self.executables[self._key(inputs)] = self._bind(lowered.compile())
            release_free_memory()
            if progress:
                steps = f" decode_steps={inputs.num_steps}" if inputs.num_steps > 1 else ""
                steps += " prompt_logprobs" if inputs.prompt_logprobs is not None else ""
                print(f"[jaxserve] compiled bucket {next(done)}/{len(padding_inputs)} "
                      f"tokens={inputs.bucket[0]} seqs={inputs.bucket[1]}{steps} "
                      f"({time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)

        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxserve-compile")
        self._jobs = []
        try:
            for inputs in padding_inputs:
                self._jobs.append(self._pool.submit(compile_one, inputs, self._lower(inputs)))
        except BaseException:
            self._pool.shutdown(cancel_futures=True)
            raise

    def finish_warmup(self, weights: Callable[[], LlamaForCausalLM] | None = None) -> float:
        """Wait for every compilation ``start_warmup`` began; ``weights`` (e.g. a loading
        future's ``result``) gives a runner built on an abstract model its weights. Returns the
        seconds since ``start_warmup``."""
        try:
            if weights is not None:
                self.attach_weights(weights())
            for job in self._jobs:
                job.result()  # re-raises a failed compilation here
        finally:
            self._pool.shutdown(cancel_futures=True)
        # the page copy ahead of time too, as one executable: a jitted function would compile
        # again for a cache committed differently, or after jax.clear_caches()
        kv = [self.kv_spec] * self.cfg.num_hidden_layers
        pages = jax.ShapeDtypeStruct((self.max_copies,), jnp.int32, sharding=self.input_sharding)
        self._copy_pages = self._copy_pages.lower(kv, pages, pages).compile()
        self._warm = True
        self.compile_count_at_warmup = backend_compile_count()
        return time.perf_counter() - self._warmup_start

    # ---- the step ----------------------------------------------------------------------------
    def launch(self, inputs: StepInputs) -> tuple:
        """Dispatch the step; returns its (still computing) device outputs. Across processes
        the step first goes to the followers, which make the same call (runner/distributed.py)."""
        if self.channel is not None:
            self.channel.send(inputs)
        return self._dispatch(inputs)

    def follow(self) -> None:
        """A follower's loop: run the leader's steps on this process's shards until it stops."""
        while (inputs := self.channel.receive()) is not None:
            self._dispatch(inputs)

    def _dispatch(self, inputs: StepInputs) -> tuple:
        if len(inputs.page_copies):
            self._run_copies(inputs.page_copies)
        key = self._key(inputs)
        exe = self.executables.get(key)
        if exe is None:
            exe = self.executables[key] = self._compile(inputs)
            if self._warm:
                self.compilations_after_warmup += 1
        outs, self.kv_caches, self.last_tokens = exe(
            self.kv_caches, self.last_tokens, *self.device_args(inputs))
        return outs

    def fetch(self, outs: tuple) -> StepResult:
        # the one device-to-host transfer of the step; the outputs are replicated, so across
        # processes this one's own copy is the whole of them
        tokens, logprobs, top_ids, top_lps, *scored = (
            jax.device_get(x) if x.is_fully_addressable else np.asarray(x.addressable_data(0))
            for x in outs)
        if tokens.ndim == 1:  # one step: give it the [K = 1] axis the engine reads
            tokens, logprobs, top_ids, top_lps = (x[None] for x in (tokens, logprobs, top_ids, top_lps))
        # a prompt-logprob step's four more outputs (runner/prompt_logprobs.py)
        prompt = PromptLogprobResult(*scored) if scored else None
        return StepResult(tokens, logprobs, top_ids, top_lps, prompt)

    def execute(self, inputs: StepInputs) -> StepResult:
        """One step, start to finish (benchmarks and tests)."""
        return self.fetch(self.launch(inputs))

    def _run_copies(self, copies: np.ndarray) -> None:  # i32[C, 2]
        for chunk in range(0, len(copies), self.max_copies):
            part = copies[chunk:chunk + self.max_copies]
            src = np.zeros(self.max_copies, np.int32)
            dst = np.full(self.max_copies, self.num_pages, np.int32)
            src[:len(part)], dst[:len(part)] = part[:, 0], part[:, 1]
            self.kv_caches = self._copy_pages(self.kv_caches, src, dst)
