"""What the attention backends share: the ragged batch's metadata and the online-softmax state.

The layout is ``cpu_attention.py``'s docstring. A state is (running max, running sum, output)
over some set of keys, not yet normalized; states over disjoint key sets merge.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30  # finite, so a fully masked row gives exp(...) == 0 rather than NaN


def sanitize_cu_q_lens(
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
) -> jax.Array:  # i32[S + 1], entries past num_seqs equal to cu_q_lens[num_seqs]
    """Padding rows own no queries, whatever their cu_q_lens entries say."""
    num_seqs_s = num_seqs.reshape(())
    rows = jnp.arange(cu_q_lens.shape[0], dtype=jnp.int32)  # i32[S + 1]
    return jnp.where(rows <= num_seqs_s, cu_q_lens, cu_q_lens[num_seqs_s])


def q_lens(
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
) -> jax.Array:  # i32[S]: queries per sequence row, 0 for padding rows
    cu = sanitize_cu_q_lens(cu_q_lens, num_seqs)
    return cu[1:] - cu[:-1]


def token_metadata(
    cu_q_lens: jax.Array,  # i32[S + 1]
    kv_lens: jax.Array,  # i32[S]
    num_seqs: jax.Array,  # i32[1]
    num_tokens: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # i32[T], i32[T], bool[T]
    """For each query token: its sequence, its position, and whether it is a real token."""
    num_seqs_s = num_seqs.reshape(())
    # entries past cu_q_lens[num_seqs] are padding and may hold garbage; searchsorted needs a
    # sorted array, so repeat the last real offset over them
    cu_q_lens = sanitize_cu_q_lens(cu_q_lens, num_seqs)
    t = jnp.arange(num_tokens, dtype=jnp.int32)  # i32[T]
    # seq_ids[t] = s such that cu_q_lens[s] <= t < cu_q_lens[s + 1]; q_len == 0 rows are skipped
    seq_ids = jnp.searchsorted(cu_q_lens, t, side="right").astype(jnp.int32) - 1  # i32[T]
    valid = t < cu_q_lens[num_seqs_s]  # bool[T]
    seq_ids = jnp.clip(seq_ids, 0, kv_lens.shape[0] - 1)
    lens = cu_q_lens[1:] - cu_q_lens[:-1]  # i32[S]
    pos = kv_lens[seq_ids] - lens[seq_ids] + (t - cu_q_lens[seq_ids])  # i32[T]
    return seq_ids, jnp.where(valid, pos, -1), valid


def empty_state(shape):  # [..., D] -> the online-softmax (max, sum, output) over no keys
    return (jnp.full(shape[:-1], MASK_VALUE, jnp.float32), jnp.zeros(shape[:-1], jnp.float32),
            jnp.zeros(shape, jnp.float32))


def normalize(m, l, acc):  # [..., Hkv, G], [..., Hkv, G], [..., Hkv, G, D] -> [..., Hkv, G, D]
    del m
    return acc / jnp.where(l == 0.0, 1.0, l)[..., None]  # queries with no keys stay 0


def merge(a, b):
    """Two online-softmax states over disjoint key sets -> the state over their union."""
    (m1, l1, acc1), (m2, l2, acc2) = a, b
    m = jnp.maximum(m1, m2)
    w1, w2 = jnp.exp(m1 - m), jnp.exp(m2 - m)
    return m, w1 * l1 + w2 * l2, w1[..., None] * acc1 + w2[..., None] * acc2


def scatter_state(state, dest, shape):
    """Per-row states (rows named by dest, num_tokens to drop) -> token order, [T, Hkv, G(, D)];
    tokens no row names keep the empty state."""
    return tuple(empty.at[dest].set(x, mode="drop") for empty, x in zip(empty_state(shape), state))
