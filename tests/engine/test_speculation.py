"""Speculative decoding on the tiny model: the same tokens as without it, and pages, compilations
and async scheduling as before."""

from __future__ import annotations

import numpy as np
import pytest

from jaxserve.sampling_params import SamplingParams, StructuredOutputs
from tests.support.configs import TINY_CONFIG

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2,
        "prompt_lookup_max": 4}
# a batch and one prompt do not round alike: logprobs agree to this, as with batching alone
LOGPROB_TOL = 1e-4

COPY_HEAVY = [
    "abcabcabcabcabc",
    "the cat sat on the mat. the cat sat on the mat. the cat",
    "1 2 3 4 5 6 7 8 1 2 3 4 5 6 7 8 1 2 3",
    "def f(x):\n    return x\ndef f(x):\n    return",
    "xyz " * 12,
    "hello world, hello world, hello",
    "aaaa bbbb aaaa bbbb aaaa",
    "copy: lorem ipsum dolor sit amet; copy: lorem ipsum",
]
PLAIN = [f"prompt {i}: {chr(97 + i) * (i + 1)} {i * 7919 % 1000}" for i in range(8)]
PROMPTS = COPY_HEAVY + PLAIN


@pytest.fixture(scope="module")
def spec_llm():
    from jaxserve.llm import LLM

    # a wider sequence rung: a batch of 8 decodes then has sample rows left for drafts
    return LLM(TINY_CONFIG, progress=False, **{"scheduler.speculative_config": SPEC,
                                               "scheduler.seq_buckets": [8, 32]})


def outputs(llm, texts, params):
    return [o.outputs for o in llm.generate(texts, params)]


def assert_same(plain, speculated):
    for a_outs, b_outs in zip(plain, speculated):
        for a, b in zip(a_outs, b_outs, strict=True):
            assert a.token_ids == b.token_ids
            assert a.text == b.text and a.finish_reason == b.finish_reason
            if a.logprobs is not None:
                for x, y in zip(a.logprobs, b.logprobs, strict=True):
                    assert x.token_id == y.token_id
                    assert abs(x.logprob - y.logprob) < LOGPROB_TOL
                    assert [t.token_id for t in x.top] == [t.token_id for t in y.top]


def accepted(llm) -> int:
    return llm.engine.speculator.stats.num_accepted_tokens


@pytest.mark.parametrize(("params", "min_accepted"), [
    (SamplingParams(temperature=0, max_tokens=32, logprobs=2, ignore_eos=True), 50),
    # top_k 3: the random model's draws then repeat often enough for some lookups to hit
    (SamplingParams(temperature=0.8, top_p=0.9, top_k=3, seed=11, max_tokens=32, logprobs=2,
                    ignore_eos=True), 5),
], ids=["greedy", "seeded"])
@pytest.mark.parametrize("batch", [1, 8])
def test_same_tokens_and_logprobs_with_speculation(tiny_llm, spec_llm, params, min_accepted,
                                                   batch):
    before = accepted(spec_llm)
    for i in range(0, len(PROMPTS), batch):
        texts = PROMPTS[i:i + batch]
        assert_same(outputs(tiny_llm, texts, params), outputs(spec_llm, texts, params))
    assert accepted(spec_llm) > before + min_accepted  # accepted, not merely proposed
    spec_llm.engine.allocator.check_all_free()


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=40, presence_penalty=0.5, repetition_penalty=1.2),
    SamplingParams(temperature=0, max_tokens=40, stop=["bc", "t o"], min_tokens=3),
    SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[99], min_tokens=6),
    SamplingParams(temperature=0.7, seed=5, n=3, max_tokens=24),
    SamplingParams(temperature=0, max_tokens=7, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=30, logit_bias={97: 3.0},
                   bad_words_token_ids=[[98], [99, 100]], allowed_token_ids=list(range(90, 130))),
], ids=["penalties", "stop-strings", "stop-token", "n3-seeded", "max-tokens", "bias"])
def test_the_sampling_rules_keep_their_meaning(tiny_llm, spec_llm, params):
    texts = COPY_HEAVY
    assert_same(outputs(tiny_llm, texts, params), outputs(spec_llm, texts, params))
    spec_llm.engine.allocator.check_all_free()


def test_a_stop_string_inside_an_accepted_draft_ends_there(tiny_llm, spec_llm):
    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    free = outputs(spec_llm, COPY_HEAVY[:1], greedy)[0][0].text
    stop = free[9:11]  # deep in the run of repeats that drafts are accepted in
    params = SamplingParams(temperature=0, max_tokens=40, stop=[stop], ignore_eos=True)
    stats = spec_llm.engine.speculator.stats
    before = stats.num_accepted_tokens
    plain, speculated = (outputs(llm, COPY_HEAVY[:1], params) for llm in (tiny_llm, spec_llm))
    assert_same(plain, speculated)
    assert speculated[0][0].finish_reason == "stop" and stop not in speculated[0][0].text
    assert stats.num_accepted_tokens > before


def test_a_json_schema_row_runs_unspeculated_beside_drafting_rows(tiny_llm, spec_llm):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    constrained = SamplingParams(temperature=0, max_tokens=40,
                                 structured_outputs=StructuredOutputs(json=schema))
    free = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    texts, params = COPY_HEAVY[:4], [constrained, free, constrained, free]
    before = accepted(spec_llm)
    assert_same(outputs(tiny_llm, texts, params), outputs(spec_llm, texts, params))
    assert accepted(spec_llm) > before


def test_no_recompiles_and_no_lost_pages_over_mixed_traffic(spec_llm):
    from jaxserve.runner.compile_cache import backend_compile_count

    engine = spec_llm.engine
    rng = np.random.default_rng(3)
    before = backend_compile_count()
    drafts_before = engine.speculator.stats.num_drafts
    texts, params = [], []
    for i in range(50):
        base = PROMPTS[i % len(PROMPTS)]
        texts.append(base * int(rng.integers(1, 4)))
        params.append(SamplingParams(
            temperature=float(rng.choice([0.0, 0.8])), seed=int(rng.integers(0, 99)),
            n=int(rng.choice([1, 2])), max_tokens=int(rng.integers(1, 40)),
            logprobs=2 if i % 4 == 0 else None, stop=["ab"] if i % 5 == 0 else [],
            presence_penalty=0.5 if i % 7 == 0 else 0.0, ignore_eos=bool(i % 2)))
    outs = spec_llm.generate(texts, params)
    assert all(c.finish_reason in ("stop", "length") for o in outs for c in o.outputs)
    assert engine.runner.compilations_after_warmup == 0
    assert backend_compile_count() == before
    assert engine.speculator.stats.num_drafts > drafts_before
    engine.allocator.check_all_free()


def test_pages_return_after_abort_and_preemption_while_drafting(spec_llm):
    engine = spec_llm.engine
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    # 8 sequences of 200 + 200 tokens need 400 pages of 8; the cache has 256
    for i in range(8):
        engine.add_request(f"big{i}", engine.admission.admit([5 + i, 6] * 100, params))
    preemptions, drafts = engine.scheduler.num_preemptions, engine.speculator.stats.num_drafts
    for step in range(150):
        engine.step()
        if step == 60:
            engine.abort_request("big3")
    engine.abort_request("big0")
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.speculator.stats.num_drafts > drafts
    engine.allocator.check_all_free()
    assert engine.scheduler.num_preemptions > preemptions


def test_a_drafting_step_is_not_looked_past(spec_llm):
    """Step N + 1 of a sequence that drafts in step N is built once N's tokens are known."""
    engine = spec_llm.engine
    launches = []
    launch = engine._launch

    def recording(sched, prev_rows):
        launches.append((sched.has_drafts, dict(prev_rows)))
        return launch(sched, prev_rows)

    engine._launch = recording
    try:
        spec_llm.generate(["abcabcabcabcabc"], SamplingParams(temperature=0, max_tokens=30,
                                                              ignore_eos=True))
    finally:
        engine._launch = launch
    drafted = [i for i, (has, _) in enumerate(launches) if has]
    assert drafted
    for i in drafted:  # the step after a drafting one reads no token from the device
        if i + 1 < len(launches):
            assert launches[i + 1][1] == {}
