"""Speculative decoding on SmolLM2, where drafts copied from the prompt are really accepted: the
same tokens and logprobs as without it, greedy and seeded, alone and batched."""

from __future__ import annotations

import inspect
import shlex
import textwrap

import pytest

from jaxserve.sampling_params import SamplingParams
from tests.engine.test_speculation import assert_same
from tests.support.configs import smollm2_overrides

pytestmark = pytest.mark.slow

SPEC = {"method": "ngram", "num_speculative_tokens": 7, "prompt_lookup_min": 2,
        "prompt_lookup_max": 4}


@pytest.fixture(scope="module")
def spec_llm(smollm2_dir):
    from jaxserve.llm import LLM

    return LLM(None, progress=False, **smollm2_overrides(smollm2_dir, "reference"),
               **{"scheduler.speculative_config": SPEC})


def chats(llm) -> list[list[int]]:
    sources = [textwrap.dedent, textwrap.indent, shlex.quote, shlex.join]
    prompts = []
    for fn in sources:
        messages = [{"role": "user", "content": "Rewrite this Python function, adding type "
                     "hints. Output only the code.\n\n" + inspect.getsource(fn)}]
        prompts.append(llm.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    return prompts


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=48, logprobs=1),
    SamplingParams(temperature=0.7, seed=4, max_tokens=48, logprobs=1),
], ids=["greedy", "seeded"])
def test_copying_prompts_give_the_same_tokens(smollm2_reference_llm, spec_llm, params):
    prompts = chats(spec_llm)
    stats = spec_llm.engine.speculator.stats
    before = stats.num_accepted_tokens
    plain = [o.outputs for o in smollm2_reference_llm.generate_ids(prompts, params)]
    together = [o.outputs for o in spec_llm.generate_ids(prompts, params)]
    alone = [spec_llm.generate_ids([p], params)[0].outputs for p in prompts]
    assert_same(plain, together)
    assert_same(plain, alone)
    assert stats.num_accepted_tokens - before > 40  # most of the output came from drafts
    spec_llm.engine.allocator.check_all_free()
    assert spec_llm.engine.runner.compilations_after_warmup == 0
