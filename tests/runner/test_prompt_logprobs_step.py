"""The prompt-logprob program on the tiny model: its values against teacher-forced logits (across
chunks), the layer-group head variant against the whole-model one, and no compilation after
warm-up with prompt-logprob requests mixed into other traffic; its block loop against one plain
log-softmax."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.kernels.ragged_paged_attention.cpu_attention import (
    cpu_ragged_paged_attention,
    cpu_update_kv_pages,
)
from jaxserve.kernels.ragged_paged_attention.kv_storage import kv_storage_dtype
from jaxserve.models.attention_metadata import AttentionBackend
from jaxserve.models.loader import load_model
from jaxserve.sampling_params import SamplingParams
from jaxserve.scoring import prompt_logits
from tests.support.configs import TINY_CONFIG
from tests.support.prompt_logprobs import assert_prompt_logprobs_match
from tests.support.prompts import LONG, prompts

REFERENCE = AttentionBackend("reference", cpu_ragged_paged_attention, cpu_update_kv_pages,
                             kv_storage_dtype)


def ids_of(llm, text: str) -> list[int]:
    return llm.tokenizer(text, add_special_tokens=False).input_ids


def engine_prompt_logprobs(llm, ids: list[int], k: int) -> list:
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=k)
    return llm.generate_ids([ids], params)[0].prompt_logprobs


def test_chunked_prompt_logprobs_match_teacher_forced_logits(tiny_llm, tiny_model_dir):
    ids = ids_of(tiny_llm, LONG)
    assert len(ids) > 2 * tiny_llm.config.scheduler.max_num_batched_tokens  # three chunks
    logits = prompt_logits(load_model(tiny_model_dir, REFERENCE, "float32"), ids)
    assert_prompt_logprobs_match(engine_prompt_logprobs(tiny_llm, ids, 5), ids, logits, 5, 1e-5)


def test_layer_group_variant_equals_the_whole_step(tiny_llm):
    from jaxserve.llm import LLM

    grouped = LLM(TINY_CONFIG, progress=False,
                  **{"model.layers_per_call": 1, "scheduler.num_decode_steps": 1})
    ids = ids_of(tiny_llm, LONG)
    ours = engine_prompt_logprobs(grouped, ids, 3)[1:]
    ref = engine_prompt_logprobs(tiny_llm, ids, 3)[1:]
    np.testing.assert_allclose([e.logprob for e in ours], [e.logprob for e in ref], atol=1e-5)
    assert [e.rank for e in ours] == [e.rank for e in ref]
    assert grouped.engine.runner.compilations_after_warmup == 0


def test_no_compilations_with_prompt_logprob_requests_mixed_in(tiny_llm):
    from jaxserve.runner.compile_cache import backend_compile_count

    engine = tiny_llm.engine
    rng = np.random.default_rng(1)
    before = backend_compile_count()
    texts, params = [], []
    for i in range(24):
        texts.append(LONG[:int(rng.integers(1, len(LONG)))] if i % 3 else prompts(8)[i % 8])
        params.append(SamplingParams(
            temperature=float(rng.choice([0.0, 0.8])), seed=i, n=int(rng.choice([1, 2])),
            max_tokens=int(rng.integers(1, 12)),
            logprobs=2 if i % 4 == 0 else None,
            prompt_logprobs=int(rng.choice([0, 1, 20])) if i % 2 else None))
    outs = tiny_llm.generate(texts, params)
    for out, p in zip(outs, params):
        assert (out.prompt_logprobs is not None) == (p.prompt_logprobs is not None)
        if p.prompt_logprobs is not None:
            assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    assert engine.runner.compilations_after_warmup == 0
    assert backend_compile_count() == before
    engine.allocator.check_all_free()


@pytest.mark.parametrize("k", [0, 20])
def test_top_k_count_follows_the_request(tiny_llm, k):
    out = engine_prompt_logprobs(tiny_llm, ids_of(tiny_llm, "hello there"), k)
    assert all(len(e.top) == k for e in out[1:])


@pytest.mark.parametrize("num_positions", [0, 1, 63, 64, 65, 150, 192])
def test_block_loop_equals_one_full_log_softmax(num_positions):
    """runner.prompt_logprobs walks Q positions in blocks and stops after the last one in use;
    the positions in use must equal a plain log-softmax of all their logits at once, and the
    blocks past the last one in use are never computed (they stay zero)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxserve.engine.prompt_logprobs import BLOCK
    from jaxserve.interfaces import PromptLogprobArrays
    from jaxserve.models.layers import Embed
    from jaxserve.models.llama import RMSNorm
    from jaxserve.runner.prompt_logprobs import prompt_logprobs

    t, q, vocab, hidden = 200, 192, 300, 16
    rng = np.random.default_rng(num_positions)
    norm = RMSNorm(hidden, 1e-5, dtype=jnp.float32)
    embed = Embed(vocab, hidden, dtype=jnp.float32, weight_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(t, hidden)), jnp.float32)  # f32[T, hidden]
    rows = np.zeros(q, np.int32)
    targets = np.zeros(q, np.int32)
    rows[:num_positions] = rng.permutation(t)[:num_positions]
    targets[:num_positions] = rng.integers(0, vocab, num_positions)
    pl = PromptLogprobArrays(rows, targets, np.array([num_positions], np.int32))
    lps, ranks, top_ids, top_lps = jax.jit(
        lambda x, pl: prompt_logprobs(norm, embed, None, x, pl))(x, pl)
    logits = np.asarray(embed.attend(norm(x[rows[:num_positions]])))  # f32[n, V]
    ref = jax.nn.log_softmax(logits, axis=-1)  # f32[n, V]
    n = num_positions
    want = np.take_along_axis(np.asarray(ref), targets[:n, None], axis=-1)[:, 0]
    np.testing.assert_allclose(np.asarray(lps[:n]), want, atol=1e-5)
    assert (np.asarray(ranks[:n]) == 1 + (np.asarray(ref) > want[:, None]).sum(-1)).all()
    assert (np.asarray(top_ids[:n]) == np.argsort(-np.asarray(ref), axis=-1)[:, :20]).all()
    np.testing.assert_allclose(np.asarray(top_lps[:n]), -np.sort(-np.asarray(ref))[:, :20],
                               atol=1e-5)
    end = -(-n // BLOCK) * BLOCK
    assert not np.asarray(lps[end:]).any() and not np.asarray(top_ids[end:]).any()
