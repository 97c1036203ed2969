"""A Llama-family decoder in Flax NNX that runs over a ragged batch against a paged KV cache.

One call takes the tokens of every scheduled sequence concatenated (prefill chunks and decode
tokens mixed), writes their K/V into the pages named by ``slot_mapping`` and attends through the
page table. Only the rows named by ``logits_indices`` go through the LM head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxserve.models.attention_metadata import AttentionBackend, AttentionMetadata
from jaxserve.models.layers import Embed, Linear
from jaxserve.models.llama_config import LlamaConfig
from jaxserve.models.rope import apply_rope, inverse_frequencies, rope_tables


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, backend: AttentionBackend, *, dtype, weight_dtype,
                 rngs: nnx.Rngs | None):
        self.cfg = cfg
        self.backend = backend
        hidden, hq, hkv, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

        def linear(n_in, n_out, bias):
            return Linear(n_in, n_out, use_bias=bias, dtype=dtype, weight_dtype=weight_dtype, rngs=rngs)

        self.q_proj = linear(hidden, hq * d, cfg.attention_bias)
        self.k_proj = linear(hidden, hkv * d, cfg.attention_bias)
        self.v_proj = linear(hidden, hkv * d, cfg.attention_bias)
        self.o_proj = linear(hq * d, hidden, False)

    def __call__(
        self,
        x: jax.Array,  # [T, hidden]
        rope: tuple[jax.Array, jax.Array],  # cos, sin: f32[T, D/2] each (step_rope)
        kv_pages: jax.Array,  # [num_pages, 2, Hkv, page_size, D]
        md: AttentionMetadata,
    ) -> tuple[jax.Array, jax.Array]:  # [T, hidden], updated kv_pages
        cfg = self.cfg
        t = x.shape[0]
        q = self.q_proj(x).reshape(t, cfg.num_attention_heads, cfg.head_dim)  # [T, Hq, D]
        k = self.k_proj(x).reshape(t, cfg.num_key_value_heads, cfg.head_dim)  # [T, Hkv, D]
        v = self.v_proj(x).reshape(t, cfg.num_key_value_heads, cfg.head_dim)  # [T, Hkv, D]
        q = apply_rope(q, *rope)
        k = apply_rope(k, *rope)
        kv_pages = self.backend.update_kv(kv_pages, k, v, md.slot_mapping)
        out = self.backend.attention(
            q, kv_pages, md.kv_lens, md.page_table, md.cu_q_lens, md.num_seqs,
            sm_scale=cfg.head_dim**-0.5, sliding_window=cfg.sliding_window,
        )  # [T, Hq, D]
        return self.o_proj(out.reshape(t, -1)), kv_pages


class LlamaMLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, weight_dtype, rngs: nnx.Rngs | None):
        def linear(n_in, n_out):
            return Linear(n_in, n_out, use_bias=False, dtype=dtype, weight_dtype=weight_dtype, rngs=rngs)

        self.gate_proj = linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size)

    def __call__(self, x: jax.Array) -> jax.Array:  # [T, hidden] -> [T, hidden]
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class RMSNorm(nnx.Module):
    """Normalizes in float32 and casts back, exactly as Hugging Face's LlamaRMSNorm does."""

    def __init__(self, dim: int, eps: float, *, dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), dtype))  # [hidden]

    def __call__(self, x: jax.Array) -> jax.Array:  # [T, hidden]
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * x32.astype(x.dtype)


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, backend: AttentionBackend, *, dtype, weight_dtype,
                 rngs: nnx.Rngs | None):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = LlamaAttention(cfg, backend, dtype=dtype, weight_dtype=weight_dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.mlp = LlamaMLP(cfg, dtype=dtype, weight_dtype=weight_dtype, rngs=rngs)

    def __call__(self, x, rope, kv_pages, md):  # x: [T, hidden]; rope: step_rope's tables
        attn_out, kv_pages = self.self_attn(self.input_layernorm(x), rope, kv_pages, md)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv_pages


class LlamaForCausalLM(nnx.Module):
    """dtype: activations, norms and K/V; weight_dtype: the projection and embedding weights
    (defaults to dtype; bfloat16 under float32 is mixed precision, see models/layers.py); rngs
    None: zero weights for a loader to fill (models/loader.py)."""

    def __init__(self, cfg: LlamaConfig, backend: AttentionBackend, *, dtype=jnp.float32,
                 weight_dtype=None, rngs: nnx.Rngs | None):
        self.cfg = cfg
        self.dtype = dtype
        weight_dtype = weight_dtype or dtype
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype,
                                  weight_dtype=weight_dtype, rngs=rngs)
        self.layers = nnx.List(
            [LlamaDecoderLayer(cfg, backend, dtype=dtype, weight_dtype=weight_dtype, rngs=rngs)
             for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.lm_head = nnx.data(None)  # tied: the embedding matrix doubles as the LM head
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=dtype,
                                  weight_dtype=weight_dtype, rngs=rngs)

    def __call__(
        self,
        input_ids: jax.Array,  # i32[T]
        positions: jax.Array,  # i32[T]
        kv_caches: list[jax.Array],  # per layer [num_pages, 2, Hkv, page_size, D]
        md: AttentionMetadata,
        logits_indices: jax.Array,  # i32[R]: the token rows whose next-token logits are needed
    ) -> tuple[jax.Array, list[jax.Array]]:  # f32[R, vocab], updated kv_caches
        x = self.embed_tokens(input_ids)  # [T, hidden]
        x, new_caches = run_layers(self.layers, x, step_rope(self.cfg, positions), kv_caches, md)
        return final_logits(self.norm, self.embed_tokens, self.lm_head, x, logits_indices), new_caches


def run_layers(
    layers,  # decoder layers, in order
    x: jax.Array,  # [T, hidden]
    rope: tuple[jax.Array, jax.Array],  # step_rope's cos, sin
    kv_caches: list[jax.Array],  # one [num_pages, 2, Hkv, page_size, D] per layer
    md: AttentionMetadata,
) -> tuple[jax.Array, list[jax.Array]]:  # [T, hidden], updated kv_caches
    # A Python loop, not a scan: each layer's cache stays its own donated buffer, so the KV
    # write is an in-place scatter instead of a copy of the whole stacked cache per step.
    new_caches = []
    for layer, kv_pages in zip(layers, kv_caches):
        x, kv_pages = layer(x, rope, kv_pages, md)
        new_caches.append(kv_pages)
    return x, new_caches


def step_rope(cfg: LlamaConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The rotary cos and sin tables of a step's tokens (i32[T] -> f32[T, D/2] twice), computed
    once and shared by every layer."""
    inv_freq = jnp.asarray(inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
    return rope_tables(positions, inv_freq)


def final_logits(
    norm: RMSNorm,
    embed_tokens: Embed,
    lm_head: Linear | None,  # None: tied, the embedding matrix doubles as the LM head
    x: jax.Array,  # [T, hidden]: the last layer's output
    logits_indices: jax.Array,  # i32[R]
) -> jax.Array:  # f32[R, vocab]
    x = norm(x[logits_indices])  # [R, hidden]
    logits = embed_tokens.attend(x) if lm_head is None else lm_head(x)
    return logits.astype(jnp.float32)
