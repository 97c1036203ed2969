"""Both kernels lower for CUDA through the Pallas Triton backend, without a GPU present."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.kernels.ragged_paged_attention import ragged_paged_attention, update_kv_pages
from jaxserve.kernels.ragged_paged_attention.export_check import TRITON_CUSTOM_CALL, export_for_cuda

T, S, P, NUM_PAGES, PAGE_SIZE = 40, 5, 8, 64, 16


def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize(
    "dtype,num_q_heads,num_kv_heads,head_dim",
    [(jnp.bfloat16, 24, 8, 128), (jnp.float32, 8, 1, 64)],
    ids=["bf16-gqa3-d128", "f32-gqa8-d64"],
)
def test_attention_lowers_to_triton(dtype, num_q_heads, num_kv_heads, head_dim):
    attention = functools.partial(
        ragged_paged_attention, sm_scale=head_dim**-0.5, sliding_window=128,
        logits_soft_cap=30.0, interpret=False,
    )
    text = export_for_cuda(
        attention,
        spec((T, num_q_heads, head_dim), dtype),
        spec((NUM_PAGES, 2, num_kv_heads, PAGE_SIZE, head_dim), dtype),
        spec((S,), jnp.int32),
        spec((S, P), jnp.int32),
        spec((S + 1,), jnp.int32),
        spec((1,), jnp.int32),
    )
    assert text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}(") == 1
    assert 'name = "ragged_paged_attention"' in text


def test_attention_on_a_bf16_cache_under_f32_queries_lowers_to_triton():
    """cache.dtype bfloat16 under float32 activations: the kernel casts its queries for the
    products, so the mixed inputs lower too."""
    attention = functools.partial(ragged_paged_attention, sm_scale=0.125, interpret=False)
    text = export_for_cuda(
        attention,
        spec((T, 8, 64), jnp.float32),
        spec((NUM_PAGES, 2, 2, PAGE_SIZE, 64), jnp.bfloat16),
        spec((S,), jnp.int32),
        spec((S, P), jnp.int32),
        spec((S + 1,), jnp.int32),
        spec((1,), jnp.int32),
    )
    assert text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}(") == 1


def test_verification_metadata_lowers_to_the_same_program():
    """Concrete metadata of a speculative-decoding step (a 5-query verification row whose
    queries cross a page boundary, decodes, a prefill chunk) lower to the program that bare
    shapes give: the metadata are traced, so shapes alone pick the program."""
    attention = functools.partial(ragged_paged_attention, sm_scale=0.125, interpret=False)
    q_lens, kv_lens = [1, 5, 1, 12], [17, 2 * PAGE_SIZE + 2, 33, 30]
    rows = len(q_lens)
    page_table = np.zeros((S, P), np.int32)
    page_table[:rows, :3] = np.arange(3 * rows).reshape(rows, 3)
    cu_q_lens = np.full(S + 1, sum(q_lens), np.int32)
    cu_q_lens[: rows + 1] = np.concatenate([[0], np.cumsum(q_lens)])
    metadata = (np.pad(kv_lens, (0, S - rows)).astype(np.int32), page_table, cu_q_lens,
                np.array([rows], np.int32))
    q = jnp.ones((T, 8, 64), jnp.float32)
    kv_pages = jnp.ones((NUM_PAGES, 2, 1, PAGE_SIZE, 64), jnp.float32)
    text = export_for_cuda(attention, q, kv_pages, *metadata)
    assert text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}(") == 1
    specs = [spec(np.shape(x), np.asarray(x).dtype) for x in (q, kv_pages, *metadata)]
    assert text == export_for_cuda(attention, *specs)


def test_kv_write_lowers_to_triton_in_place():
    text = export_for_cuda(
        jax.jit(functools.partial(update_kv_pages, interpret=False), donate_argnums=0),
        spec((NUM_PAGES, 2, 8, PAGE_SIZE, 128), jnp.bfloat16),
        spec((T, 8, 128), jnp.bfloat16),
        spec((T, 8, 128), jnp.bfloat16),
        spec((T,), jnp.int32),
    )
    assert text.count(f"stablehlo.custom_call @{TRITON_CUSTOM_CALL}(") == 1
    assert 'name = "update_kv_pages"' in text
    # the cache is both the kernel's output and the donated argument: no copy of the cache
    assert "output_operand_aliases" in text and "tf.aliasing_output = 0" in text


def test_export_keeps_the_custom_call_check():
    """Without the Triton call on the allow list, export refuses the kernel: the check is live."""
    kv_write = functools.partial(update_kv_pages, interpret=False)
    with pytest.raises(ValueError, match="custom call"):
        export_for_cuda(
            kv_write,
            spec((NUM_PAGES, 2, 1, PAGE_SIZE, 64), jnp.float32),
            spec((T, 1, 64), jnp.float32),
            spec((T, 1, 64), jnp.float32),
            spec((T,), jnp.int32),
            allowed_custom_calls=(),
        )
