"""The prompt-logprob program on the tiny model: its values against teacher-forced logits (across
chunks), the layer-group head variant against the whole-model one, and no compilation after
warm-up with prompt-logprob requests mixed into other traffic."""

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
