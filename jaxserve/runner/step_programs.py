"""The jitted programs of a step, as pure functions of (weights, K/V caches, step inputs).

- ``one_step``: one forward pass and the sampler, for any batch;
- ``decode_steps``: K forward passes of a decode-only batch in a ``lax.scan``, each step's tokens
  fed to the next on the device;
- ``copy_pages``: page copies of n>1 forks, before a step.

Each takes the K/V caches as a donated argument (``KV_CACHES_ARG``), so XLA updates them in place,
and leaves its last sampled token per sample row on the device for the next step's hand-over
(``handover.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxserve.runner.handover import keep_last, resolve
from jaxserve.runner.sampler import sample

# a step program's donated argument: the K/V caches, which XLA then updates in place; named once
# for the jitted programs and for their stored copies (program_cache.py re-jits those)
KV_CACHES_ARG = (1,)


def forward_and_sample(graphdef: nnx.GraphDef) -> Callable:
    """(state, kv_caches, input_ids, positions, md, logits_indices, sm) -> (sampled, kv_caches)."""

    def step(state, kv_caches, input_ids, positions, md, logits_indices, sm):
        model = nnx.merge(graphdef, state)
        logits, kv_caches = model(input_ids, positions, kv_caches, md, logits_indices)
        return sample(logits, sm), kv_caches

    return step


def one_step_program(graphdef: nnx.GraphDef, max_rows: int) -> Callable:
    """One step; the jitted program of every (tokens, sequences) bucket."""
    step = forward_and_sample(graphdef)

    def one_step(state, kv_caches, last_tokens, input_ids, prev_rows, *args):
        out, kv_caches = step(state, kv_caches, resolve(last_tokens, input_ids, prev_rows), *args)
        return out, kv_caches, keep_last(out[0], max_rows)

    return jax.jit(one_step, donate_argnums=KV_CACHES_ARG)


def decode_steps_program(graphdef: nnx.GraphDef, max_rows: int, page_size: int,
                         num_steps: int) -> Callable:
    """``num_steps`` decode steps in one call; outputs gain a leading [K] axis."""
    step = forward_and_sample(graphdef)

    def decode_steps(state, kv_caches, last_tokens, input_ids, prev_rows, positions, md,
                     logits_indices, sm):
        input_ids = resolve(last_tokens, input_ids, prev_rows)
        # decode-only: token i is row i's one query and its sample row
        t_pad, s_pad = input_ids.shape[0], logits_indices.shape[0]
        num_seqs = md.num_seqs[0]
        tok = jnp.arange(t_pad, dtype=jnp.int32)
        tok_row = jnp.minimum(tok, s_pad - 1)
        max_page = md.page_table.shape[1] - 1

        # only what changes from step to step rides in the loop carry; the page table, sampling
        # parameters and the rest stay loop-invariant operands
        def one(carry, _):
            kv_caches, ids, pos, kv_lens, rng_steps = carry
            page = md.page_table[tok_row, jnp.minimum(pos // page_size, max_page)]
            slots = jnp.where(tok < num_seqs, page * page_size + pos % page_size, -1)
            step_md = dataclasses.replace(md, slot_mapping=slots, kv_lens=kv_lens)
            step_sm = dataclasses.replace(sm, rng_steps=rng_steps)
            out, kv_caches = step(state, kv_caches, ids, pos, step_md, logits_indices, step_sm)
            ids = ids.at[jnp.arange(s_pad)].set(out[0], mode="drop")
            kv_lens = kv_lens + (tok_row[:s_pad] < num_seqs)
            return (kv_caches, ids, pos + 1, kv_lens, rng_steps + 1), out

        carry = (kv_caches, input_ids, positions, md.kv_lens, sm.rng_steps)
        # a lone sequence's steps are unrolled: XLA:CPU runs a while-loop body without the
        # concurrent scheduling a top-level program gets, and wider batches are faster rolled
        # (scripts/bench_step.py measures both)
        (kv_caches, *_), outs = jax.lax.scan(one, carry, length=num_steps, unroll=s_pad == 1)
        return outs, kv_caches, keep_last(outs[0][-1], max_rows)

    return jax.jit(decode_steps, donate_argnums=KV_CACHES_ARG)


def copy_pages_program() -> Callable:
    """(kv_caches, src, dst) -> kv_caches with page dst = page src; dst == num_pages pads."""

    def copy_pages(kv_caches, src, dst):  # src, dst: i32[C]
        return [kv.at[dst].set(kv[src], mode="drop") for kv in kv_caches]

    return jax.jit(copy_pages, donate_argnums=(0,))
