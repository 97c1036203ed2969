"""The jitted sampler: penalties, logit bias, temperature, top-k/top-p/min-p, seeded draws, logprobs.

Each row draws from its own threefry stream, keyed by the sample's seed and its output index, so a
request's tokens do not depend on what else is in the batch. The expensive parts (a full-vocab
sort for top-k/top-p, token counts for penalties, Gumbel noise) sit behind ``lax.cond`` on flags
computed by the host, so a batch that does not use them does not pay for them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.runner.sampling_metadata import SamplingArrays

NUM_TOP_LOGPROBS = 20  # always computed; the host keeps as many as each request asked for
_NEG_INF = -1e30


def _apply_penalties(logits: jax.Array, sm: SamplingArrays) -> jax.Array:  # f32[R, V]
    rows, vocab = logits.shape
    hist = sm.history  # i32[R, L]
    is_output = jnp.arange(hist.shape[1])[None, :] >= sm.num_prompt_tokens[:, None]  # bool[R, L]
    safe = jnp.where(hist < 0, vocab, hist)  # out-of-range ids are dropped by the scatter
    row_ids = jnp.broadcast_to(jnp.arange(rows)[:, None], hist.shape)
    zeros = jnp.zeros((rows, vocab), jnp.float32)
    output_counts = zeros.at[row_ids, safe].add(is_output.astype(jnp.float32), mode="drop")
    seen = zeros.at[row_ids, safe].max(1.0, mode="drop") > 0  # bool[R, V]: in prompt or output
    rep = sm.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - sm.frequency_penalty[:, None] * output_counts
    logits = logits - sm.presence_penalty[:, None] * (output_counts > 0)
    return logits


def _apply_bitmask(logits: jax.Array, sm: SamplingArrays) -> jax.Array:  # f32[R, V]
    vocab = logits.shape[1]
    ids = jnp.arange(vocab, dtype=jnp.int32)
    words = sm.token_bitmask[:, ids // 32]  # i32[R, V]
    allowed = (jnp.right_shift(words, ids % 32) & 1) == 1  # arithmetic shift: bit 31 works too
    return jnp.where(allowed, logits, _NEG_INF)


def _top_k_top_p_mask(logits: jax.Array, sm: SamplingArrays) -> jax.Array:  # f32[R, V]
    vocab = logits.shape[1]
    sorted_desc = -jnp.sort(-logits, axis=-1)  # f32[R, V]
    k = jnp.where(sm.top_k <= 0, vocab, jnp.minimum(sm.top_k, vocab))  # i32[R]
    kth = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)  # f32[R, 1]
    sorted_desc = jnp.where(sorted_desc < kth, _NEG_INF, sorted_desc)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
    keep = before < sm.top_p[:, None]  # the first token is always kept
    threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    threshold = jnp.maximum(threshold, kth)
    return jnp.where(logits < threshold, _NEG_INF, logits)


def argmax(x: jax.Array) -> jax.Array:  # f32[R, V] -> i32[R]
    """jnp.argmax over the last axis (first index of the maximum; a row with a NaN gives its
    first NaN, as jnp.argmax does) as a max and a min over the vocabulary, because XLA:CPU runs
    jnp.argmax as a (value, index) reduce that does not vectorize."""
    vocab = x.shape[-1]
    top = jnp.max(x, axis=-1, keepdims=True)  # f32[R, 1]; NaN if the row holds one
    hit = (x == top) | jnp.isnan(x)  # bool[R, V]
    ids = jnp.arange(vocab, dtype=jnp.int32)
    return jnp.min(jnp.where(hit, ids, vocab), axis=-1)


def _gumbel_noise(sm: SamplingArrays, vocab: int) -> jax.Array:  # f32[R, V]
    def one_row(key_data, step):
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data, impl="threefry2x32"), step)
        return jax.random.gumbel(key, (vocab,), jnp.float32)

    return jax.vmap(one_row)(sm.rng_keys, sm.rng_steps)


def logprobs_of(logits: jax.Array, tokens: jax.Array):
    """f32[R, V] logits and i32[R] tokens -> each token's logprob f32[R], the top-k ids i32[R, 20]
    and logprobs f32[R, 20], and the whole log-softmax f32[R, V]: what sampled and prompt
    tokens both report."""
    logprobs = jax.nn.log_softmax(logits, axis=-1)  # f32[R, V]
    top_logprobs, top_ids = jax.lax.top_k(logprobs, NUM_TOP_LOGPROBS)  # f32[R, 20], i32[R, 20]
    token = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]  # f32[R]
    return token, top_ids.astype(jnp.int32), top_logprobs, logprobs


def sample(
    logits: jax.Array,  # f32[R, V]: the model's next-token logits
    sm: SamplingArrays,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Returns token i32[R], its logprob f32[R], top ids i32[R, 20] and top logprobs f32[R, 20]."""
    rows, vocab = logits.shape
    x = jax.lax.cond(sm.any_penalty, _apply_penalties, lambda lg, _: lg, logits, sm)
    row_ids = jnp.broadcast_to(jnp.arange(rows)[:, None], sm.bias_ids.shape)
    safe_bias_ids = jnp.where(sm.bias_ids < 0, vocab, sm.bias_ids)
    x = x.at[row_ids, safe_bias_ids].add(sm.bias_values, mode="drop")
    # the grammar comes last, so no bias or penalty can push a forbidden token back in
    x = jax.lax.cond(sm.any_mask, _apply_bitmask, lambda lg, _: lg, x, sm)
    greedy_tokens = argmax(x)  # i32[R]

    def draw(x):
        greedy = sm.temperature <= 0.0
        scaled = x / jnp.where(greedy, 1.0, sm.temperature)[:, None]
        scaled = jax.lax.cond(sm.any_filter, _top_k_top_p_mask, lambda lg, _: lg, scaled, sm)
        probs = jax.nn.softmax(scaled, axis=-1)
        floor = sm.min_p[:, None] * jnp.max(probs, axis=-1, keepdims=True)
        scaled = jnp.where(probs < floor, _NEG_INF, scaled)
        # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits), with no
        # cumulative sum and no host round trip
        drawn = argmax(scaled + _gumbel_noise(sm, vocab))
        return jnp.where(greedy, greedy_tokens, drawn)

    tokens = jax.lax.cond(sm.any_random, draw, lambda _: greedy_tokens, x)

    def with_logprobs(tokens):
        # logprobs describe the model's own distribution, before any sampling parameter (as vLLM)
        return logprobs_of(logits, tokens)[:3]

    def without(tokens):  # a full-vocab softmax and top-k cost more than the rest of sampling
        return (jnp.zeros((rows,), jnp.float32), jnp.zeros((rows, NUM_TOP_LOGPROBS), jnp.int32),
                jnp.zeros((rows, NUM_TOP_LOGPROBS), jnp.float32))

    token_logprobs, top_ids, top_logprobs = jax.lax.cond(sm.any_logprobs, with_logprobs, without,
                                                         tokens)
    return tokens, token_logprobs, top_ids, top_logprobs
