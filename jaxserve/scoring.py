"""Teacher-forced logits of one token sequence: every position's next-token distribution in one
forward pass, outside the engine (parity tests against transformers, dtype accuracy checks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.models.attention_metadata import AttentionMetadata
from jaxserve.models.llama import LlamaForCausalLM


def prompt_logits(model: LlamaForCausalLM, token_ids: list[int], page_size: int = 16,
                  kv_dtype=None) -> np.ndarray:  # f32[T, V]
    """Logits at every position of token_ids, the sequence laid out on its own fresh pages;
    K/V in kv_dtype (None: the activations' dtype)."""
    cfg = model.cfg
    t = len(token_ids)
    num_pages = -(-t // page_size)
    backend = model.layers[0].self_attn.backend
    dtype = backend.kv_storage_dtype(model.dtype if kv_dtype is None else kv_dtype)
    # [num_pages, 2, Hkv, page_size, D] per layer
    kv = [jnp.zeros((num_pages, 2, cfg.num_key_value_heads, page_size, cfg.head_dim), dtype)
          for _ in range(cfg.num_hidden_layers)]
    md = AttentionMetadata(
        slot_mapping=jnp.arange(t, dtype=jnp.int32), kv_lens=jnp.array([t], jnp.int32),
        page_table=jnp.arange(num_pages, dtype=jnp.int32)[None],
        cu_q_lens=jnp.array([0, t], jnp.int32), num_seqs=jnp.array([1], jnp.int32),
    )
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, kv, ids):  # i32[T] -> f32[T, V]
        logits, _ = nnx.merge(graphdef, state)(ids, jnp.arange(t, dtype=jnp.int32), kv, md,
                                               jnp.arange(t, dtype=jnp.int32))
        return logits.astype(jnp.float32)

    return np.asarray(jax.device_get(forward(state, kv, jnp.asarray(token_ids, jnp.int32))))
