"""The device-side hand-over of sampled tokens from one step to the next.

Each step leaves its sampled token per sample row on the device (``keep_last``); the next step's
decode rows take their input token from there (``resolve``), so the host never has to send back
a token it has not fetched yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resolve(
    last_tokens: jax.Array,  # i32[R]: the previous step's sampled token per sample row
    input_ids: jax.Array,  # i32[T]: the host's tokens (placeholders where prev_rows >= 0)
    prev_rows: jax.Array,  # i32[T]: the previous step's sample row to read, or -1
) -> jax.Array:  # i32[T]
    return jnp.where(prev_rows >= 0, last_tokens[jnp.maximum(prev_rows, 0)], input_ids)


def keep_last(tokens: jax.Array, max_rows: int) -> jax.Array:  # i32[S] -> i32[max_rows]
    return jnp.zeros(max_rows, jnp.int32).at[:tokens.shape[0]].set(tokens)
