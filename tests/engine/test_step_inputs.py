"""What vLLM's per-request fields put into a step's arrays: allowed_token_ids as a fixed mask
(alone, with a grammar, across multi-step decode) and cache_salt keeping prefixes apart."""

from __future__ import annotations

import numpy as np

from jaxserve.engine.step_inputs import allowed_bitmask, bad_word_bans
from jaxserve.sampling_params import SamplingParams, StructuredOutputs
from tests.engine.test_llm_engine import OnlyThenStopFactory
from tests.support.fake_engine import add, make_engine, run_all


def allowed_ids(bitmask_row: np.ndarray, vocab: int = 259) -> list[int]:
    ids = np.arange(vocab)
    return np.nonzero((bitmask_row[ids // 32] >> (ids % 32)) & 1)[0].tolist()


def test_allowed_bitmask_sets_exactly_those_bits():
    assert allowed_ids(allowed_bitmask((0, 31, 32, 200, 258), 9)) == [0, 31, 32, 200, 258]


def test_allowed_token_ids_mask_their_row_only(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **{"scheduler.num_decode_steps": 4})
    add(engine, "a", [10, 11], SamplingParams(max_tokens=8, temperature=0,
                                              allowed_token_ids=[12, 40, 77]))
    add(engine, "free", [50], SamplingParams(max_tokens=8, temperature=0))
    run_all(engine)
    steps = engine.runner.steps
    assert all(bool(s.sampling.any_mask) for s in steps)
    assert all(allowed_ids(s.sampling.token_bitmask[0]) == [12, 40, 77] for s in steps)
    assert all((s.sampling.token_bitmask[1] == -1).all() for s in steps)
    assert any(s.num_steps == 4 for s in steps)  # a fixed mask needs no host between steps


def test_allowed_token_ids_and_a_grammar_both_hold(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    engine.admission.constraint_factory = OnlyThenStopFactory([13, 14])
    params = SamplingParams(max_tokens=4, temperature=0, allowed_token_ids=[14, 90],
                            structured_outputs=StructuredOutputs(regex="x"))
    add(engine, "c", [10, 11, 12], params)
    run_all(engine)
    first, second = engine.runner.steps[:2]
    assert allowed_ids(first.sampling.token_bitmask[0]) == []  # grammar 13, allowed 14: none
    assert allowed_ids(second.sampling.token_bitmask[0]) == [14]


def test_cache_salt_keeps_prefixes_apart(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    prefix = list(range(100, 112))  # three full pages of 4

    def cached(rid: str, salt: str | None) -> int:
        add(engine, rid, prefix + [7], SamplingParams(max_tokens=1, cache_salt=salt))
        outputs = []
        while engine.has_unfinished_requests():
            outputs += engine.step()
        return outputs[-1].num_cached_tokens

    assert cached("a", "x") == 0
    assert cached("b", "y") == 0
    assert cached("c", None) == 0
    assert cached("d", "x") == 12
    assert cached("e", None) == 12
    engine.allocator.check_all_free()


def test_bad_word_bans_follow_the_output():
    words = [[5], [7, 8], [1, 2, 3]]
    assert bad_word_bans(words, []) == [5]
    assert bad_word_bans(words, [9, 7]) == [5, 8]
    assert bad_word_bans(words, [1, 2]) == [5, 3]
    assert bad_word_bans(words, [2]) == [5]


def test_bad_words_ban_in_the_bias_and_run_one_step_at_a_time(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **{"scheduler.num_decode_steps": 4})
    params = SamplingParams(max_tokens=4, temperature=0, bad_words_token_ids=[[11, 12], [90]])
    add(engine, "a", [10], params)  # the fake rule yields 11, 12, ...: 12 is banned after 11
    run_all(engine)
    steps = engine.runner.steps
    assert all(s.num_steps == 1 for s in steps)

    def banned(step) -> set[int]:
        ids, values = step.sampling.bias_ids[0], step.sampling.bias_values[0]
        return {int(t) for t, v in zip(ids, values) if t >= 0 and v <= -1e8}

    assert banned(steps[0]) == {90} and banned(steps[1]) == {12, 90}
