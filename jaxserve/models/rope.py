"""Rotary position embeddings, computed per token from its position (no cached tables).

Uses the Hugging Face "rotate half" convention: the first and second halves of each head are the
two coordinates of every rotated pair.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.models.llama_config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))  # [D/2]
    if scaling is None:
        return inv_freq.astype(np.float32)
    if scaling.rope_type == "linear":
        return (inv_freq / scaling.factor).astype(np.float32)
    if scaling.rope_type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        medium = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        return np.where(medium, blended, scaled).astype(np.float32)
    raise ValueError(f"rope_scaling type {scaling.rope_type!r} is not supported")


def rope_tables(
    positions: jax.Array,  # i32[T]
    inv_freq: jax.Array,  # f32[D/2]
) -> tuple[jax.Array, jax.Array]:  # cos, sin: f32[T, D/2] each
    """Inside one program XLA:CPU fuses these into every fusion that rotates q or k and evaluates
    cos and sin per element, so per head and per layer (an optimization barrier does not stop
    it: XLA drops barriers before fusion). Layer
    groups therefore compute them in the embedding program and pass them to every group call
    (runner/layer_groups.py)."""
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # f32[T, D/2]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(
    x: jax.Array,  # [T, H, D]
    cos: jax.Array,  # f32[T, D/2]
    sin: jax.Array,  # f32[T, D/2]
) -> jax.Array:  # [T, H, D]
    cos, sin = cos[:, None, :], sin[:, None, :]  # f32[T, 1, D/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # f32[T, H, D/2] each
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
