"""SmolLM2's prompt logprobs (float32 weights) against transformers' log-softmax of the same
prompt: across a chunked prefill, and for a prompt whose pages are in the prefix cache.

Each prompt token's logprob is within 1e-4 of transformers'. The top-k's logprobs get 1e-4
relative on top: the two float32 forwards differ by up to ~1.5e-4 somewhere in the vocabulary
(jaxserve's own one-shot forward, ``scoring.py``, as much as the engine's), and a top entry of
logprob -4.5 can land there; the engine against jaxserve's own forward is checked to 1e-5 on the
tiny model (tests/runner/test_prompt_logprobs_step.py)."""

from __future__ import annotations

import pytest

from jaxserve.sampling_params import SamplingParams
from tests.support.chats import CHATS, chat_ids
from tests.support.prompt_logprobs import assert_prompt_logprobs_match, hf_prompt_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_prompt(smollm2_reference_llm, smollm2_dir):
    """A chat prompt longer than one step's token budget, and transformers' logits for it."""
    llm = smollm2_reference_llm
    ids = chat_ids(llm.tokenizer, " ".join(CHATS * 4))
    budget = llm.config.scheduler.max_num_batched_tokens
    assert budget < len(ids) < 2 * budget  # two chunks, the second not a whole block
    return ids, hf_prompt_logits(smollm2_dir, ids)


def test_prompt_logprobs_match_transformers_across_chunks(smollm2_reference_llm, long_prompt):
    ids, logits = long_prompt
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=5)
    out = smollm2_reference_llm.generate_ids([ids], params)[0]
    assert_prompt_logprobs_match(out.prompt_logprobs, ids, logits, 5, 1e-4, top_rtol=1e-4)


def test_prompt_logprobs_of_a_cached_prefix(smollm2_reference_llm, long_prompt):
    llm, (ids, logits) = smollm2_reference_llm, long_prompt
    plain = SamplingParams(temperature=0, max_tokens=1)
    llm.generate_ids([ids], plain)  # its pages go into the prefix cache
    assert llm.generate_ids([ids], plain)[0].num_cached_tokens > 0
    asks = llm.generate_ids([ids], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2))
    assert asks[0].num_cached_tokens == 0  # computed again: a cached position has no logits
    assert_prompt_logprobs_match(asks[0].prompt_logprobs, ids, logits, 2, 1e-4, top_rtol=1e-4)
