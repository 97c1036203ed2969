"""Linear and embedding layers whose weights may be stored narrower than the activations.

``weight_dtype`` is what the parameters are stored (and read from memory) in; ``dtype`` is what
activations, norms and K/V are computed in. With bfloat16 weights and float32 activations a dot
casts its activation input to bfloat16 and accumulates in float32 (``preferred_element_type``),
the mixed precision GPUs use: weight bytes per decode step halve, and on processors with bfloat16
instructions XLA:CPU's bf16 GEMM runs faster than its float32 one (docs/performance.md).

Flax's own ``nnx.Linear``/``nnx.Embed`` with ``param_dtype != dtype`` instead convert the whole
weight to ``dtype`` on every call, so these layers do the dot themselves. Parameter names (``kernel``,
``bias``, ``embedding``) match Flax's, which the loader maps to Hugging Face names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def mixed_dot(x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
    """einsum(spec, x, w) reading w as stored; the result is in x's dtype.

    x: [T, in] activations; w: the weight in either layout the spec names.
    """
    if w.dtype == x.dtype:
        return jnp.einsum(spec, x, w)
    t = x.shape[0]
    xw = x.astype(w.dtype)  # [T, in]
    if t == 1 and jax.default_backend() == "cpu":
        # XLA:CPU's matrix-vector path for bfloat16 is far slower than its GEMM path: a second,
        # zero row sends it to the GEMM
        xw = jnp.pad(xw, ((0, 1), (0, 0)))  # [2, in]
    out = jnp.einsum(spec, xw, w, preferred_element_type=x.dtype)  # [T or 2, out]
    return out[:t]


def initial(init, rngs: nnx.Rngs | None, shape: tuple[int, ...], dtype) -> jax.Array:
    """A random initial weight, or zeros when rngs is None: placeholders a loader overwrites
    (an abstract build would otherwise trace a random initializer per weight at every start)."""
    return jnp.zeros(shape, dtype) if rngs is None else init(rngs.params(), shape, dtype)


class Linear(nnx.Module):
    def __init__(self, n_in: int, n_out: int, *, use_bias: bool, dtype, weight_dtype,
                 rngs: nnx.Rngs | None):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(initial(init, rngs, (n_in, n_out), weight_dtype))  # [in, out]
        self.bias = nnx.Param(jnp.zeros((n_out,), dtype)) if use_bias else nnx.data(None)  # [out]
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:  # [T, in] -> [T, out]
        y = mixed_dot(x.astype(self.dtype), self.kernel[...], "ti,io->to")
        return y if self.bias is None else y + self.bias[...]


class Embed(nnx.Module):
    """Token embedding; ``attend`` is the tied LM head (x @ embedding.T)."""

    def __init__(self, vocab: int, hidden: int, *, dtype, weight_dtype, rngs: nnx.Rngs | None):
        init = nnx.initializers.normal(1.0)
        self.embedding = nnx.Param(initial(init, rngs, (vocab, hidden), weight_dtype))  # [V, hidden]
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:  # i32[T] -> [T, hidden]
        table = self.embedding[...]  # [V, hidden]
        if table.dtype == self.dtype:
            return jnp.take(table, ids, axis=0, mode="clip")
        # Gather the rows as raw integers of the same width, then convert only them. XLA:CPU
        # computes bfloat16 ops in float32 (a convert around each), so a bfloat16 gather inside
        # the multi-step decode loop becomes a float32 copy of the whole table read every step.
        uint = jnp.dtype(f"uint{8 * table.dtype.itemsize}")
        bits = jax.lax.bitcast_convert_type(table, uint)  # u16[V, hidden] for bfloat16
        rows = jnp.take(bits, ids, axis=0, mode="clip")  # u16[T, hidden]
        return jax.lax.bitcast_convert_type(rows, table.dtype).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:  # [R, hidden] -> [R, V]
        return mixed_dot(x.astype(self.dtype), self.embedding[...], "th,vh->tv")
