"""Prompt logprobs' bookkeeping against the fake runner (no model): which positions each chunk
computes, where the results land, the prefix-cache rule and the program a step runs. The real
model's values are checked against transformers in tests/engine/test_prompt_logprobs_smollm2.py."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.engine import prompt_logprobs
from jaxserve.engine.sequence import Request, Sequence
from jaxserve.sampling_params import ParamError, SamplingParams
from tests.support import fake_engine
from tests.support.fake_engine import add


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def make_engine(request, tiny_tokenizer):
    def make(**overrides):
        mode = {"scheduler.async_scheduling": request.param}
        return fake_engine.make_engine(tiny_tokenizer, **(mode | overrides))
    return make


def run(engine) -> dict[str, list]:
    """Step until done; every output of each request, in order."""
    outputs: dict[str, list] = {}
    for _ in range(1000):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    assert not engine.has_unfinished_requests()
    return outputs


def check_prompt_logprobs(prompt: list[int], got: list, k: int) -> None:
    """The fake runner's values: -(previous token + token / 1000), rank token + 1."""
    assert got[0] is None and len(got) == len(prompt)
    for j in range(1, len(prompt)):
        entry = got[j]
        assert entry.token_id == prompt[j], j
        assert entry.logprob == pytest.approx(-(prompt[j - 1] + prompt[j] / 1000)), j
        assert entry.rank == prompt[j] + 1 and len(entry.top) == k


def test_chunked_prompt_gets_every_position_once_in_the_first_output(make_engine):
    engine = make_engine()
    prompt = list(range(20, 60))  # 40 tokens, 16 per step: chunks of 16, 16, 8
    add(engine, "a", prompt, SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=2))
    outs = run(engine)["a"]
    check_prompt_logprobs(prompt, outs[0].prompt_logprobs, 2)
    assert all(o.prompt_logprobs is None for o in outs[1:])  # sent once
    chunk_steps = [s for s in engine.runner.steps if s.prompt_logprobs is not None]
    # 15 positions, 16, then 8 of which the last predicts the first output token, not the prompt
    assert [int(s.prompt_logprobs.num_positions[0]) for s in chunk_steps] == [16, 16, 7]
    engine.allocator.check_all_free()


def test_only_steps_that_carry_prompt_positions_run_the_variant(make_engine):
    engine = make_engine()
    add(engine, "plain", [5, 6, 7], SamplingParams(max_tokens=4, temperature=0))
    run(engine)
    assert all(s.prompt_logprobs is None for s in engine.runner.steps)
    assert engine.runner.steps[0].bucket == (8, 4)  # the ordinary bucket of a 3-token prefill
    engine.runner.steps.clear()
    add(engine, "asks", [5, 6, 7], SamplingParams(max_tokens=4, temperature=0, prompt_logprobs=0))
    run(engine)
    first, *rest = engine.runner.steps
    assert first.prompt_logprobs is not None and first.bucket == (16, 4)  # the variant's bucket
    assert all(s.prompt_logprobs is None for s in rest)  # decodes: the ordinary programs


def test_prompt_logprobs_skip_the_prefix_cache_but_fill_it(make_engine):
    engine = make_engine()
    prompt = list(range(30, 50))  # 20 tokens: 4 full pages of 4 can be cached
    params = SamplingParams(max_tokens=2, temperature=0)
    add(engine, "warm", prompt, params)
    run(engine)
    add(engine, "asks", prompt, SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=1))
    asks = run(engine)["asks"]
    assert asks[-1].num_cached_tokens == 0
    check_prompt_logprobs(prompt, asks[0].prompt_logprobs, 1)
    add(engine, "again", prompt, params)  # the pages stay cached for requests that do not ask
    assert run(engine)["again"][-1].num_cached_tokens >= 16
    engine.allocator.check_all_free()


def test_recompute_after_preemption_skips_collected_positions():
    params = SamplingParams(prompt_logprobs=0)
    request = Request("r", list(range(10)), params, max_tokens=4)
    seq = Sequence(seq_id=0, request=request, index=0, token_ids=list(range(10)),
                   num_prompt_tokens=10, rng_key=np.zeros(2, np.uint32))
    request.prompt_logprobs = [None]
    assert prompt_logprobs.chunk_positions(seq, 0, 4) == (0, 4)
    assert prompt_logprobs.chunk_positions(seq, 4, 6) == (4, 5)  # position 9 predicts no prompt token
    request.prompt_logprobs += [object()] * 6  # tokens 1..6 in, then a preemption: recompute from 0
    assert prompt_logprobs.chunk_positions(seq, 0, 4) == (6, 0)
    assert prompt_logprobs.chunk_positions(seq, 4, 4) == (6, 2)
    assert prompt_logprobs.pending(seq)
    fork = Sequence(seq_id=1, request=request, index=1, token_ids=list(range(10)),
                    num_prompt_tokens=10, rng_key=np.zeros(2, np.uint32))
    assert prompt_logprobs.chunk_positions(fork, 0, 10) == (0, 0)  # the leader computes them


def test_preempted_request_still_gets_every_prompt_logprob(tiny_tokenizer):
    # 12 pages of 4 tokens: three requests of 10 prompt + 20 output tokens cannot all fit
    engine = fake_engine.make_engine(tiny_tokenizer, **{"cache.num_pages": 12})
    prompts = [list(range(40 + i, 50 + i)) for i in range(3)]
    for i, prompt in enumerate(prompts):
        add(engine, f"r{i}", prompt, SamplingParams(max_tokens=20, temperature=0, prompt_logprobs=1))
    outs = run(engine)
    assert engine.scheduler.num_preemptions > 0
    for i, prompt in enumerate(prompts):
        firsts = [o.prompt_logprobs for o in outs[f"r{i}"] if o.prompt_logprobs is not None]
        assert len(firsts) == 1
        check_prompt_logprobs(prompt, firsts[0], 1)
    engine.allocator.check_all_free()


def test_a_one_token_prompt_has_only_none(make_engine):
    engine = make_engine()
    add(engine, "one", [9], SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=3))
    assert run(engine)["one"][0].prompt_logprobs == [None]


@pytest.mark.parametrize("value", [-1, 21])
def test_out_of_range_prompt_logprobs_name_the_field(tiny_tokenizer, value):
    engine = fake_engine.make_engine(tiny_tokenizer)
    with pytest.raises(ParamError) as err:
        engine.admission.admit([1, 2], SamplingParams(prompt_logprobs=value))
    assert err.value.param == "prompt_logprobs"
