"""One full jitted engine step (model + Pallas kernels + sampler) lowers for CUDA without a GPU.

Any change that breaks the GPU path (a kernel that no longer lowers to Triton, an op without a
CUDA lowering in the model or sampler) fails here, on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.config import load_config
from jaxserve.engine.step_inputs import StepInputBuilder
from jaxserve.kernels.ragged_paged_attention import ragged_paged_attention, update_kv_pages
from jaxserve.kernels.ragged_paged_attention.export_check import TRITON_CUSTOM_CALL, export_for_cuda
from jaxserve.models.attention_metadata import AttentionBackend
from jaxserve.models.llama_config import LlamaConfig
from jaxserve.models.loader import load_model
from jaxserve.runner.model_runner import ModelRunner
from tests.support.configs import TINY_CONFIG


def test_full_model_step_exports_for_cuda(tiny_model_dir):
    backend = AttentionBackend(
        "pallas",
        functools.partial(ragged_paged_attention, interpret=False),  # the real GPU kernels
        functools.partial(update_kv_pages, interpret=False),
        jnp.dtype,  # the kernels keep a cache in its own dtype
    )
    config = load_config(TINY_CONFIG)
    model = load_model(tiny_model_dir, backend)
    runner = ModelRunner(model, num_pages=config.cache.num_pages, page_size=config.cache.page_size,
                         max_num_seqs=config.scheduler.max_num_seqs, max_rows=8)
    cfg = LlamaConfig.from_hf(tiny_model_dir)
    builder = StepInputBuilder(
        token_buckets=config.scheduler.token_buckets, seq_buckets=config.scheduler.seq_buckets,
        page_size=config.cache.page_size,
        max_pages_per_seq=config.model.max_model_len // config.cache.page_size,
        max_model_len=config.model.max_model_len, eos_token_ids=(2,), vocab_size=cfg.vocab_size,
    )
    inputs = builder.padding_inputs((16, 8))

    def spec(x):
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)

    args = jax.tree_util.tree_map(spec, (runner.state, runner.kv_caches, runner.last_tokens,
                                         *runner.device_args(inputs)))
    text = export_for_cuda(runner.step_fn, *args)
    # each kernel lowers to a Triton call once, in a function every layer calls
    assert text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}(") == 2
    assert text.count("call @ragged_paged_attention(") == cfg.num_hidden_layers
    assert text.count("call @update_kv_pages(") == cfg.num_hidden_layers
    # the cache is donated: each layer's buffer aliases an output, so no copy of the cache
    assert text.count("tf.aliasing_output") >= cfg.num_hidden_layers
