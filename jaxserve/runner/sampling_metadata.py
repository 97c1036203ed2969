"""Per-row sampling parameters as device arrays, so new values never cause a recompile."""

from __future__ import annotations

import dataclasses

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingMetadata:
    temperature: jax.Array  # f32[R]: 0 means greedy
    top_p: jax.Array  # f32[R]: 1 disables
    top_k: jax.Array  # i32[R]: 0 disables
    min_p: jax.Array  # f32[R]: 0 disables
    presence_penalty: jax.Array  # f32[R]
    frequency_penalty: jax.Array  # f32[R]
    repetition_penalty: jax.Array  # f32[R]: 1 disables
    bias_ids: jax.Array  # i32[R, B]: token ids to bias (logit_bias, min_tokens); -1 pads
    bias_values: jax.Array  # f32[R, B]
    rng_keys: jax.Array  # u32[R, 2]: threefry key data of each sample's own random stream
    rng_steps: jax.Array  # i32[R]: output index, folded into the key so a draw never repeats
    history: jax.Array  # i32[R, L]: prompt then output ids, -1 pads (read only for penalties)
    num_prompt_tokens: jax.Array  # i32[R]: history[:, :num_prompt_tokens] is the prompt
    any_random: jax.Array  # bool[]: some row samples (temperature > 0)
    any_filter: jax.Array  # bool[]: some row uses top_p or top_k (needs a sort)
    any_penalty: jax.Array  # bool[]: some row uses a penalty (needs token counts)
    token_bitmask: jax.Array  # i32[R, ceil(V / 32)]: bit t % 32 of word t // 32 allows token t
    any_mask: jax.Array  # bool[]: some row is constrained by a grammar
    any_logprobs: jax.Array  # bool[]: some row wants logprobs
