"""One full jitted engine step (model + Pallas kernels + sampler) lowers for CUDA without a GPU.

Any change that breaks the GPU path (a kernel that no longer lowers to Triton, an op without a
CUDA lowering in the model or sampler) fails here, on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import re

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


def tiny_cuda_step(tiny_model_dir, weight_dtype: str | None = None):
    """The tiny model's runner on the real GPU kernels, and the engine's input builder."""
    backend = AttentionBackend(
        "pallas",
        functools.partial(ragged_paged_attention, interpret=False),  # the real GPU kernels
        functools.partial(update_kv_pages, interpret=False),
        jnp.dtype,  # the kernels keep a cache in its own dtype
    )
    config = load_config(TINY_CONFIG)
    model = load_model(tiny_model_dir, backend, "float32", weight_dtype)
    runner = ModelRunner(model, num_pages=config.cache.num_pages, page_size=config.cache.page_size,
                         max_num_seqs=config.scheduler.max_num_seqs, max_rows=8)
    cfg = LlamaConfig.from_hf(tiny_model_dir)
    builder = StepInputBuilder(
        token_buckets=config.scheduler.token_buckets, seq_buckets=config.scheduler.seq_buckets,
        page_size=config.cache.page_size,
        max_pages_per_seq=config.model.max_model_len // config.cache.page_size,
        max_model_len=config.model.max_model_len, eos_token_ids=(2,), vocab_size=cfg.vocab_size,
    )
    return runner, builder, cfg


def export_step(runner: ModelRunner, inputs) -> str:
    def spec(x):
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)

    args = jax.tree_util.tree_map(spec, (runner.state, runner.kv_caches, runner.last_tokens,
                                         *runner.device_args(inputs)))
    return export_for_cuda(runner.step_fn, *args)


def test_full_model_step_exports_for_cuda(tiny_model_dir):
    runner, builder, cfg = tiny_cuda_step(tiny_model_dir)
    text = export_step(runner, builder.padding_inputs((16, 8)))
    # each kernel lowers to a Triton call once, in a function every layer calls
    assert text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}(") == 2
    assert text.count("call @ragged_paged_attention(") == cfg.num_hidden_layers
    assert text.count("call @update_kv_pages(") == cfg.num_hidden_layers
    # the cache is donated: each layer's buffer aliases an output, so no copy of the cache
    assert text.count("tf.aliasing_output") >= cfg.num_hidden_layers


def test_int8_step_exports_integer_dots_and_no_dequantized_weight(tiny_model_dir):
    """With int8 weights every projection and the tied head is an int8 x int8 -> int32 dot on
    the GPU too, and no int8 weight is converted to float (a dequantized copy per step)."""
    runner, builder, cfg = tiny_cuda_step(tiny_model_dir, "int8")
    text = export_step(runner, builder.padding_inputs((16, 8)))
    int8_dots = re.findall(r"stablehlo\.dot_general .*: \(tensor<[0-9x]+xi8>, tensor<([0-9x]+)xi8>\)"
                           r" -> tensor<[0-9x]+xi32>", text)
    assert len(int8_dots) == 7 * cfg.num_hidden_layers + 1  # q, k, v, o, gate, up, down; head
    weight_shapes = set(int8_dots)
    converts = re.findall(r"stablehlo\.convert .*: \(tensor<([0-9x]+)xi8>\) -> tensor<[0-9x]+xf32>",
                          text)
    assert converts and not weight_shapes & set(converts)  # only gathered embedding rows convert
    assert text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}(") == 2


def test_verification_step_exports_the_bucket_program(tiny_model_dir):
    """A speculative-decoding step in the (16, 8) bucket (a 5-query verification row whose
    queries cross a page boundary, two decodes, a prefill chunk) exports the very program of the
    bucket's all-padding inputs: the metadata are traced arrays, so the bucket's shapes alone
    pick the program, and one compile per bucket serves verification rows too."""
    runner, builder, _ = tiny_cuda_step(tiny_model_dir)
    padding = builder.padding_inputs((16, 8))
    ps = builder.page_size
    q_lens, kv_lens = [5, 1, 1, 9], [2 * ps + 2, ps + 1, 3 * ps + 1, 20]
    rows = len(q_lens)
    page_table = np.zeros_like(padding.page_table)
    page_table[:rows, :4] = np.arange(4 * rows).reshape(rows, 4)
    positions = np.concatenate([np.arange(k - q, k) for q, k in zip(q_lens, kv_lens)])
    seq = np.repeat(np.arange(rows), q_lens)
    slots = page_table[seq, positions // ps] * ps + positions % ps
    cu_q_lens = np.full_like(padding.cu_q_lens, sum(q_lens))
    cu_q_lens[: rows + 1] = np.concatenate([[0], np.cumsum(q_lens)])
    verification = dataclasses.replace(
        padding,
        input_ids=np.arange(16, dtype=np.int32) + 3,
        positions=positions.astype(np.int32),
        slot_mapping=slots.astype(np.int32),
        kv_lens=np.pad(kv_lens, (0, 8 - rows)).astype(np.int32),
        page_table=page_table,
        cu_q_lens=cu_q_lens,
        num_seqs=np.array([rows], np.int32),
        logits_indices=np.pad(np.cumsum(q_lens) - 1, (0, 8 - rows)).astype(np.int32),
        num_sample_rows=rows,
    )
    assert sum(q_lens) == 16 and any(k // ps != (k - q) // ps for q, k in zip(q_lens, kv_lens))
    text = export_step(runner, verification)
    assert text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}(") == 2
    assert text == export_step(runner, padding)
