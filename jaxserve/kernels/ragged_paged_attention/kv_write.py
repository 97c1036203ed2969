"""Write this step's new K/V into the paged cache: a Pallas (Triton) kernel.

Same semantics as ``cpu_update_kv_pages`` and ``oracle.update_kv_pages``: token t goes to page
``slot_mapping[t] // page_size``, offset ``slot_mapping[t] % page_size``; slot -1 marks a padding
token and is skipped, as is any slot past the end of the cache.

The grid is ``(cdiv(T, block_t), Hkv)``: each program copies ``block_t`` tokens of one KV head, a
``[block_t, D]`` tile of K and one of V. The cache is aliased to the output
(``input_output_aliases``), so the kernel touches only the written slots; donate ``kv_pages`` at
the jit boundary or XLA has to copy the whole cache first to keep the caller's buffer intact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

DEFAULT_BLOCK_T = 16  # tokens per program; a decode step has few, so keep programs small


def _kv_write_kernel(
    slot_ref,  # i32[T]
    k_ref,  # [T, Hkv, D]
    v_ref,  # [T, Hkv, D]
    kv_in_ref,  # [num_pages, 2, Hkv, page_size, D], aliased to kv_ref; never read
    kv_ref,  # [num_pages, 2, Hkv, page_size, D] output
    *,
    block_t: int,
):
    del kv_in_ref  # same buffer as kv_ref; the kernel only writes through the output
    i, kv_head = pl.program_id(0), pl.program_id(1)
    num_tokens, _, head_dim = k_ref.shape
    num_pages, _, _, page_size, _ = kv_ref.shape
    token = i * block_t + lax.broadcasted_iota(jnp.int32, (block_t, 1), 0)  # i32[block_t, 1]
    d = lax.broadcasted_iota(jnp.int32, (1, head_dim), 1)  # i32[1, D]
    token_ok = token < num_tokens  # bool[block_t, 1]
    slot = pltriton.load(slot_ref.at[token], mask=token_ok, other=-1)  # i32[block_t, 1]
    ok = token_ok & (slot >= 0) & (slot < num_pages * page_size)
    # skipped lanes point past the cache: slot -1 would give page -1, which interpret mode's
    # scatter wraps to the last page, where it could race a real lane of the same program
    page = jnp.where(ok, slot // page_size, num_pages)  # i32[block_t, 1]
    offset = slot % page_size  # i32[block_t, 1]
    k = pltriton.load(k_ref.at[token, kv_head, d], mask=ok)  # [block_t, D]
    v = pltriton.load(v_ref.at[token, kv_head, d], mask=ok)  # [block_t, D]
    pltriton.store(kv_ref.at[page, 0, kv_head, offset, d], k.astype(kv_ref.dtype), mask=ok)
    pltriton.store(kv_ref.at[page, 1, kv_head, offset, d], v.astype(kv_ref.dtype), mask=ok)


@functools.partial(jax.jit, static_argnames=("block_t", "interpret"))
def update_kv_pages(
    kv_pages: jax.Array,  # [num_pages, 2, Hkv, page_size, D]
    k: jax.Array,  # [T, Hkv, D]
    v: jax.Array,  # [T, Hkv, D]
    slot_mapping: jax.Array,  # i32[T]: page * page_size + offset; -1 for padding tokens
    *,
    block_t: int = DEFAULT_BLOCK_T,
    interpret: bool | None = None,
) -> jax.Array:  # [num_pages, 2, Hkv, page_size, D], updated in place when donated
    """Pallas twin of ``cpu_update_kv_pages``; interpret=None means interpret on CPU."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if v.shape != k.shape:
        raise ValueError(f"k {k.shape} and v {v.shape} must have the same shape")
    if head_dim & (head_dim - 1) or block_t & (block_t - 1):
        raise ValueError(f"head_dim={head_dim} and block_t={block_t} must be powers of two")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    return pl.pallas_call(
        functools.partial(_kv_write_kernel, block_t=block_t),
        grid=(pl.cdiv(num_tokens, block_t), num_kv_heads),
        out_shape=jax.ShapeDtypeStruct(kv_pages.shape, kv_pages.dtype),
        input_output_aliases={3: 0},  # kv_pages (4th input) is the output buffer
        # Triton params select the Triton backend (Mosaic GPU is this JAX's default on GPU)
        compiler_params=pltriton.CompilerParams(num_warps=1, num_stages=1),
        interpret=interpret,
        name="update_kv_pages",
    )(slot_mapping, k, v, kv_pages)
