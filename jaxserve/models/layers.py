"""Linear and embedding layers whose weights may be stored narrower than the activations.

``weight_dtype`` is what the parameters are stored (and read from memory) in; ``dtype`` is what
activations, norms and K/V are computed in. With bfloat16 weights and float32 activations a dot
casts its activation input to bfloat16 and accumulates in float32 (``preferred_element_type``),
the mixed precision GPUs use: weight bytes per decode step halve, and on processors with bfloat16
instructions XLA:CPU's bf16 GEMM runs faster than its float32 one (docs/performance.md).

``weight_dtype`` int8 stores each weight as int8 with one float32 scale per output channel, and
quantizes each dot's activation input per row at run time (W8A8, dynamic): the dot multiplies
int8 by int8 into int32 and reads a quarter of float32's weight bytes; how fast XLA runs it
depends on the processor (fast with AMX, slower than bfloat16 on AMD's AVX-512). A weight-only int8
dot (int8 converted to float inside the step) is not offered: XLA:CPU materializes the converted
weight first, which reads more bytes than float32 does (docs/performance.md, "Knobs").

Flax's own ``nnx.Linear``/``nnx.Embed`` with ``param_dtype != dtype`` instead convert the whole
weight to ``dtype`` on every call, so these layers do the dot themselves. Parameter names (``kernel``,
``bias``, ``embedding``) match Flax's, which the loader maps to Hugging Face names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _lone_row_padded(x: jax.Array) -> jax.Array:  # [T, in] -> [T or 2, in]
    """A single row with a second, zero row on CPU: XLA:CPU's matrix-vector path for bfloat16 and
    int8 is far slower than its GEMM path, which two rows take. Callers slice the result to T."""
    if x.shape[0] == 1 and jax.default_backend() == "cpu":
        return jnp.pad(x, ((0, 1), (0, 0)))
    return x


def mixed_dot(x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
    """einsum(spec, x, w) reading w as stored; the result is in x's dtype.

    x: [T, in] activations; w: the weight in either layout the spec names.
    """
    if w.dtype == x.dtype:
        return jnp.einsum(spec, x, w)
    xw = _lone_row_padded(x.astype(w.dtype))  # [T or 2, in]
    out = jnp.einsum(spec, xw, w, preferred_element_type=x.dtype)  # [T or 2, out]
    return out[:x.shape[0]]


def quantized_dot(x: jax.Array, w: jax.Array, w_scale: jax.Array, spec: str) -> jax.Array:
    """einsum(spec, x, w * w_scale) with x quantized to int8 per row; the result is in x's dtype.

    x: [T, in] activations; w: int8 weight in either layout the spec names; w_scale: f32[out].
    """
    x_scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True).astype(jnp.float32) / 127  # [T, 1]
    x_scale = jnp.where(x_scale == 0, 1.0, x_scale)  # an all-zero row (padding) stays zero
    xq = jnp.clip(jnp.round(x / x_scale), -127, 127).astype(jnp.int8)  # [T, in]
    acc = jnp.einsum(spec, _lone_row_padded(xq), w, preferred_element_type=jnp.int32)
    acc = acc[:x.shape[0]]  # i32[T, out]
    return (acc.astype(jnp.float32) * x_scale * w_scale).astype(x.dtype)


def weight_dot(x: jax.Array, w: jax.Array, w_scale: jax.Array | None, spec: str) -> jax.Array:
    """A layer's product with its stored weight: quantized when the weight has scales (int8)."""
    return mixed_dot(x, w, spec) if w_scale is None else quantized_dot(x, w, w_scale, spec)


def quantize_per_channel(w, axis: int):
    """(int8 values, float32 scales) of a float weight, one scale per slice along ``axis``'s
    complement: the largest magnitude of each output channel maps to 127. Host or device arrays.
    """
    xp = jnp if isinstance(w, jax.Array) else np
    w = w.astype(xp.float32)
    scale = xp.max(xp.abs(w), axis=axis) / 127  # f32[out]
    scale = xp.where(scale == 0, 1.0, scale).astype(xp.float32)
    q = xp.clip(xp.rint(w / xp.expand_dims(scale, axis)), -127, 127).astype(xp.int8)
    return q, scale


def initial(init, rngs: nnx.Rngs | None, shape: tuple[int, ...], dtype) -> jax.Array:
    """A random initial weight, or zeros when rngs is None: placeholders a loader overwrites
    (an abstract build would otherwise trace a random initializer per weight at every start)."""
    return jnp.zeros(shape, dtype) if rngs is None else init(rngs.params(), shape, dtype)


def stored_weight(init, rngs: nnx.Rngs | None, shape: tuple[int, ...], weight_dtype, axis: int):
    """(weight, scales) parameters: int8 values with float32 scales per channel (``axis`` is the
    one each scale spans) for an int8 weight_dtype, else the weight as stored and no scales."""
    if jnp.dtype(weight_dtype) != jnp.int8:
        return nnx.Param(initial(init, rngs, shape, weight_dtype)), nnx.data(None)
    values, scale = quantize_per_channel(initial(init, rngs, shape, jnp.float32), axis)
    return nnx.Param(values), nnx.Param(scale)


class Linear(nnx.Module):
    def __init__(self, n_in: int, n_out: int, *, use_bias: bool, dtype, weight_dtype,
                 rngs: nnx.Rngs | None):
        # [in, out], and f32[out] scales when int8
        self.kernel, self.kernel_scale = stored_weight(nnx.initializers.lecun_normal(), rngs,
                                                       (n_in, n_out), weight_dtype, axis=0)
        self.bias = nnx.Param(jnp.zeros((n_out,), dtype)) if use_bias else nnx.data(None)  # [out]
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:  # [T, in] -> [T, out]
        scale = None if self.kernel_scale is None else self.kernel_scale[...]
        y = weight_dot(x.astype(self.dtype), self.kernel[...], scale, "ti,io->to")
        return y if self.bias is None else y + self.bias[...]


class Embed(nnx.Module):
    """Token embedding; ``attend`` is the tied LM head (x @ embedding.T)."""

    def __init__(self, vocab: int, hidden: int, *, dtype, weight_dtype, rngs: nnx.Rngs | None):
        # [V, hidden], and f32[V] scales when int8: one per row, the LM head's output channels
        self.embedding, self.embedding_scale = stored_weight(nnx.initializers.normal(1.0), rngs,
                                                             (vocab, hidden), weight_dtype, axis=1)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:  # i32[T] -> [T, hidden]
        table = self.embedding[...]  # [V, hidden]
        if self.embedding_scale is not None:
            rows = jnp.take(table, ids, axis=0, mode="clip")  # i8[T, hidden]
            scale = jnp.take(self.embedding_scale[...], ids, mode="clip")  # f32[T]
            return (rows.astype(jnp.float32) * scale[:, None]).astype(self.dtype)
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
        scale = None if self.embedding_scale is None else self.embedding_scale[...]
        return weight_dot(x.astype(self.dtype), self.embedding[...], scale, "th,vh->tv")
