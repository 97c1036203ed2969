"""Prompt logprobs on the device: the variant of a step that also scores its prompt positions.

A step that carries prompt-logprob positions (``interfaces.PromptLogprobArrays``, planned by
``engine/prompt_logprobs.py``) runs its bucket's variant program instead of the ordinary one, so
steps that carry none run exactly the program they ran before. The variant does the ordinary
step's work, then takes the final hidden states of its prompt positions through the norm and the
LM head, ``BLOCK`` positions at a time in a loop that stops after the last block in use: the
[block, vocab] logits of one block are the most that exist at once, and a step computes only the
blocks its positions fill.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxserve.engine.prompt_logprobs import BLOCK
from jaxserve.interfaces import PromptLogprobArrays
from jaxserve.models.llama import final_logits, run_layers, step_rope
from jaxserve.runner.handover import keep_last, resolve
from jaxserve.runner.sampler import NUM_TOP_LOGPROBS, logprobs_of, sample
from jaxserve.runner.step_programs import KV_CACHES_ARG

jax.tree_util.register_dataclass(PromptLogprobArrays)


def prompt_logprobs(
    norm, embed_tokens, lm_head,  # the model's final norm, embedding and LM head (None: tied)
    x: jax.Array,  # [T, hidden]: the last layer's output
    pl: PromptLogprobArrays,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """f32[Q] target logprobs, i32[Q] ranks, i32[Q, 20] top ids, f32[Q, 20] top logprobs."""
    q = pl.token_rows.shape[0]
    block = min(q, BLOCK)
    assert q % block == 0, (q, block)

    def one_block(i, acc):
        at = i * block
        rows = jax.lax.dynamic_slice(pl.token_rows, (at,), (block,))  # i32[block]
        targets = jax.lax.dynamic_slice(pl.targets, (at,), (block,))  # i32[block]
        logits = final_logits(norm, embed_tokens, lm_head, x, rows)  # f32[block, V]
        target, top_ids, top_lps, logprobs = logprobs_of(logits, targets)  # f32[block], ...
        rank = 1 + jnp.sum(logprobs > target[:, None], axis=-1, dtype=jnp.int32)  # i32[block]
        new = (target, rank, top_ids, top_lps)
        return tuple(jax.lax.dynamic_update_slice(a, v, (at,) + (0,) * (a.ndim - 1))
                     for a, v in zip(acc, new))

    init = (jnp.zeros((q,), jnp.float32), jnp.zeros((q,), jnp.int32),
            jnp.zeros((q, NUM_TOP_LOGPROBS), jnp.int32),
            jnp.zeros((q, NUM_TOP_LOGPROBS), jnp.float32))
    num_blocks = (pl.num_positions[0] + block - 1) // block  # a dynamic bound: a while loop
    return jax.lax.fori_loop(0, num_blocks, one_block, init)


def prompt_logprobs_step_program(graphdef: nnx.GraphDef, max_rows: int) -> Callable:
    """``one_step`` (step_programs.py) plus the prompt logprobs; its outputs are the sampler's
    four, then ``prompt_logprobs``' four."""

    def step(state, kv_caches, last_tokens, input_ids, prev_rows, positions, md, logits_indices,
             sm, pl):
        model = nnx.merge(graphdef, state)
        # the model's forward, spelled out to keep its last hidden states for the prompt rows
        x = model.embed_tokens(resolve(last_tokens, input_ids, prev_rows))  # [T, hidden]
        x, kv_caches = run_layers(model.layers, x, step_rope(model.cfg, positions), kv_caches, md)
        logits = final_logits(model.norm, model.embed_tokens, model.lm_head, x, logits_indices)
        out = sample(logits, sm)
        scored = prompt_logprobs(model.norm, model.embed_tokens, model.lm_head, x, pl)
        return (*out, *scored), kv_caches, keep_last(out[0], max_rows)

    return jax.jit(step, donate_argnums=KV_CACHES_ARG)
