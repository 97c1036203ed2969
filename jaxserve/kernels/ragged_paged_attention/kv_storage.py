"""How the CPU backend keeps K/V: float32 as is, bfloat16 as its uint16 bit patterns.

XLA:CPU computes a bfloat16 gather or scatter in float32, converting the whole operand, i.e. a
layer's entire cache, on every call, while it gathers a uint16 cache as is
(``scripts/bench_attention_ab.py --kv-dtypes`` measures the two). Gathered uint16 bits become
bfloat16 for free (``for_products``) and go into the attention's
products as bfloat16 inputs with float32 accumulation, XLA:CPU's fast GEMM path. The Pallas
kernels keep a real bfloat16 cache: a GPU gathers it natively.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kv_storage_dtype(dtype) -> jnp.dtype:
    """The dtype a K/V cache of ``dtype`` is allocated in for the CPU backend."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.uint16) if dtype == jnp.bfloat16 else dtype


def product_dtype(storage) -> jnp.dtype:
    """The dtype the attention's products take K/V (and the queries) in, for a cache stored in
    ``storage``: bfloat16 for uint16 bits, float32 otherwise."""
    return jnp.dtype(jnp.bfloat16 if jnp.dtype(storage) == jnp.uint16 else jnp.float32)


def for_products(x: jax.Array) -> jax.Array:  # gathered K/V -> product_dtype(x.dtype)
    if x.dtype == jnp.uint16:
        return jax.lax.bitcast_convert_type(x, jnp.bfloat16)
    return x.astype(jnp.float32)


def to_storage(kv: jax.Array, dtype) -> jax.Array:  # f32|bf16 K/V -> the cache's storage dtype
    if dtype == jnp.uint16:  # round to bfloat16, keep its bits
        return jax.lax.bitcast_convert_type(kv.astype(jnp.bfloat16), jnp.uint16)
    return kv.astype(dtype)
