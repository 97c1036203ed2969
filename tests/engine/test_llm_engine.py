"""The engine's bookkeeping (scheduling, pages, stops, forks, constraints) against a fake runner:
no model, milliseconds per test. tests/engine/test_scheduler.py drives the Scheduler alone."""

from __future__ import annotations

import pytest

from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.engine.step_inputs import _SUPPRESS
from jaxserve.sampling_params import ParamError, SamplingParams
from tests.support import fake_engine
from tests.support.fake_engine import EOS, add, run_all

SYNC = {"scheduler.async_scheduling": False}
_mode: dict = {}


@pytest.fixture(autouse=True, params=[False, True], ids=["sync", "async"])
def scheduling_mode(request):
    """Every test runs one step at a time and with async scheduling; the outputs must agree."""
    _mode["scheduler.async_scheduling"] = request.param
    yield
    _mode.clear()


def make_engine(tokenizer, **overrides) -> LLMEngine:
    """The fake engine in this test's scheduling mode (overrides may still pin one)."""
    return fake_engine.make_engine(tokenizer, **(_mode | overrides))


def test_decode_follows_fake_rule_and_stops_at_max_tokens(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    add(engine, "a", [10, 11, 12], SamplingParams(max_tokens=5, temperature=0))
    assert run_all(engine) == {"a": [[13, 14, 15, 16, 17]]}
    engine.allocator.check_all_free()


def test_chunked_prefill_respects_token_budget(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    prompt = list(range(20, 60))  # 40 tokens, budget 16 per step
    add(engine, "long", prompt, SamplingParams(max_tokens=2, temperature=0))
    out = run_all(engine)
    assert out == {"long": [[60, 61]]}
    chunks = [int(s.cu_q_lens[s.num_seqs[0]]) for s in engine.runner.steps]
    assert chunks[:3] == [16, 16, 8] and max(chunks) <= 16
    engine.allocator.check_all_free()


def test_decodes_go_before_a_new_prefill(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **SYNC)  # b joins the step after a's prefill
    add(engine, "a", [5, 6], SamplingParams(max_tokens=4, temperature=0))
    engine.step()  # a's prefill
    add(engine, "b", list(range(30, 60)), SamplingParams(max_tokens=1, temperature=0))
    engine.step()
    step = engine.runner.steps[-1]
    assert step.input_ids[0] == 7  # a's decode token comes first
    assert int(step.cu_q_lens[1]) == 1 and int(step.cu_q_lens[2]) == 16  # b fills the rest


def test_preemption_by_recompute_keeps_outputs_and_frees_pages(tiny_tokenizer):
    # 12 pages of 4 tokens: three requests of 10 prompt + 20 output tokens cannot all fit
    engine = make_engine(tiny_tokenizer, **{"cache.num_pages": 12})
    for i in range(3):
        add(engine, f"r{i}", list(range(40 + i, 50 + i)), SamplingParams(max_tokens=20, temperature=0))
    out = run_all(engine)
    assert engine.scheduler.num_preemptions > 0
    for i in range(3):
        start = 50 + i
        assert out[f"r{i}"] == [list(range(start, start + 20))]
    engine.allocator.check_all_free()


def test_n_samples_share_prompt_pages_then_copy_the_partial_page(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    add(engine, "n", list(range(10, 16)), SamplingParams(n=3, max_tokens=3, temperature=0))
    seen = engine.step()  # prefill once; all three samples take their first token from it
    step = engine.runner.steps[0]
    assert int(step.num_seqs[0]) == 1 and step.num_sample_rows == 3
    seqs = engine.requests["n"].seqs
    assert seqs[1].pages[0] == seqs[0].pages[0]  # the full page is shared
    assert seqs[1].pages[1] != seqs[0].pages[1]  # the partial page is copied
    assert engine.allocator.ref_counts[seqs[0].pages[0]] == 3
    seen += engine.step()
    assert len(engine.runner.steps[1].page_copies) == 2
    out = run_all(engine, seen)
    assert out["n"] == [[16, 17, 18]] * 3
    engine.allocator.check_all_free()


def test_abort_frees_pages_and_reports_abort(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    add(engine, "x", [1, 3, 4, 5, 6], SamplingParams(n=2, max_tokens=50, temperature=0))
    add(engine, "y", [7, 8], SamplingParams(max_tokens=50, temperature=0))
    engine.step()
    engine.step()
    final = engine.abort_request("x")
    assert final.finished and {c.finish_reason for c in final.outputs} == {"abort"}
    engine.abort_request("y")
    assert not engine.has_unfinished_requests()
    engine.allocator.check_all_free()


def test_eos_stops_unless_ignored_or_below_min_tokens(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    # fake rule: the token after 1 is 2 == EOS
    add(engine, "stop", [0, 1], SamplingParams(max_tokens=5, temperature=0))
    add(engine, "ignore", [0, 1], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    add(engine, "stopid", [0, 5], SamplingParams(max_tokens=5, temperature=0, stop_token_ids=[7]))
    # below min_tokens the eos goes on; at min_tokens it stops (199 -> 0, 1, then 2)
    add(engine, "below", [0, 1], SamplingParams(max_tokens=4, temperature=0, min_tokens=3))
    add(engine, "reached", [198, 199], SamplingParams(max_tokens=9, temperature=0,
                                                             min_tokens=2))
    out = run_all(engine)
    assert out["stop"] == [[2]]
    assert out["ignore"] == [[2, 3, 4]]
    assert out["stopid"] == [[6, 7]]
    assert out["below"] == [[2, 3, 4, 5]]
    assert out["reached"] == [[0, 1, 2]]


def test_min_tokens_puts_eos_in_the_bias(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    add(engine, "m", [0, 1], SamplingParams(max_tokens=5, temperature=0, min_tokens=2))
    # the fake rule ignores the bias: its first token is 2, the eos, which must not stop "m"
    assert run_all(engine) == {"m": [[2, 3, 4, 5, 6]]}
    sampled, lifted = 0, 0
    for step in engine.runner.steps:
        bias_ids = step.sampling.bias_ids[0].tolist()
        if sampled < 2:  # eos suppressed while fewer than min_tokens tokens are out
            assert EOS in bias_ids
            assert step.sampling.bias_values[0, bias_ids.index(EOS)] == _SUPPRESS
        else:  # and free again once they are
            assert EOS not in bias_ids
            lifted += 1
        sampled += step.num_steps
    assert lifted > 0


def test_request_errors_name_the_problem(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    with pytest.raises(ParamError) as err:
        add(engine, "big", list(range(100)), SamplingParams(max_tokens=100))
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    with pytest.raises(ParamError, match="temperature") as err:
        add(engine, "t", [1], SamplingParams(temperature=3.0))
    assert err.value.param == "temperature"
    with pytest.raises(ParamError, match="n must be at most") as err:
        add(engine, "n", [1], SamplingParams(n=5))
    assert err.value.param == "n"
    assert not engine.has_unfinished_requests()
    add(engine, "dup", [1], SamplingParams(max_tokens=1))
    with pytest.raises(ParamError, match="already running") as err:
        add(engine, "dup", [1], SamplingParams(max_tokens=1))
    assert err.value.param == "request_id"


def test_prefix_cache_skips_computing_a_shared_prefix(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    prefix = list(range(100, 112))  # three full pages of 4
    add(engine, "a", prefix + [7, 8], SamplingParams(max_tokens=2, temperature=0))
    run_all(engine)
    add(engine, "b", prefix + [9], SamplingParams(max_tokens=2, temperature=0))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    first = engine.runner.steps[-1]  # b's prefill: one token, so its decode burst too
    assert int(first.cu_q_lens[1]) == 1  # only the token after the cached prefix is computed
    assert int(first.positions[0]) == 12
    assert outputs[-1].num_cached_tokens == 12
    assert [t for o in outputs for t in o.outputs[0].token_ids] == [10, 11]
    engine.allocator.check_all_free()


def test_prefix_caching_can_be_turned_off(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **{"cache.enable_prefix_caching": False})
    prompt = list(range(100, 113))
    for rid in ("a", "b"):
        add(engine, rid, prompt, SamplingParams(max_tokens=1, temperature=0))
        run_all(engine)
    assert int(engine.runner.steps[-1].cu_q_lens[1]) == 13


SNAP = {"scheduler.max_num_batched_tokens": 32, "scheduler.token_buckets": [8, 16, 32],
        "scheduler.num_decode_steps": 1}


def step_tokens(engine) -> list[int]:
    return [int(s.cu_q_lens[s.num_seqs[0]]) for s in engine.runner.steps]


def test_a_step_just_past_a_rung_fills_it_and_the_rest_waits(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **SYNC, **SNAP)
    add(engine, "a", [5, 6, 7], SamplingParams(max_tokens=4, temperature=0))
    engine.step()
    add(engine, "b", list(range(30, 46)), SamplingParams(max_tokens=2, temperature=0))
    out = run_all(engine)
    # a's decode and b's 16 tokens would make 17, padded to 32: b gives up one token instead
    assert step_tokens(engine)[1:3] == [16, 2]
    assert out == {"a": [[9, 10, 11]], "b": [[46, 47]]}
    engine.allocator.check_all_free()


def test_the_rung_below_counts_a_waiting_prompt_by_its_uncached_tokens(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **SYNC, **SNAP)
    prefix = list(range(100, 120))  # five full pages of 4
    add(engine, "p", prefix + [1], SamplingParams(max_tokens=1, temperature=0))
    run_all(engine)
    add(engine, "a", [5, 6, 7], SamplingParams(max_tokens=4, temperature=0))
    engine.step()
    add(engine, "q", prefix + list(range(60, 76)), SamplingParams(max_tokens=1,
                                                                         temperature=0))
    run_all(engine)
    # q has 36 tokens but 20 cached: a's decode + 16 would be 17; 16 it is, then 1 + 1
    assert step_tokens(engine)[-3:-1] == [16, 2]
    engine.allocator.check_all_free()


def test_a_decode_or_a_last_token_is_never_held_back(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **SYNC, **SNAP, **{"scheduler.max_num_seqs": 17,
                                                            "scheduler.seq_buckets": [32]})
    for i in range(16):
        add(engine, f"r{i}", [40 + i], SamplingParams(max_tokens=3, temperature=0))
    engine.step()
    add(engine, "z", [9], SamplingParams(max_tokens=1, temperature=0))
    engine.step()
    assert step_tokens(engine) == [16, 17]  # 16 decodes and z's one token: padded, not delayed


class OnlyThenStop:
    """A hand-made constraint: allows exactly the given tokens in order, then is done."""

    def __init__(self, tokens):
        self.tokens = list(tokens)

    def fill_bitmask(self, bitmask, row):
        bitmask[row] = 0
        bitmask[row, self.tokens[0] // 32] = 1 << (self.tokens[0] % 32)

    def accept_token(self, token_id):
        assert token_id == self.tokens.pop(0)

    def is_terminated(self):
        return not self.tokens


class ConstantFactory:
    """A constraint factory that hands out one given constraint (or None) for any grammar."""

    def __init__(self, constraint):
        self.constraint = constraint

    def compile(self, so):
        return so

    def constraints(self, so, n):
        return [self.constraint] * n


class OnlyThenStopFactory:
    def __init__(self, tokens):
        self.tokens = tokens

    def compile(self, so):
        return self.tokens

    def constraints(self, so, n):
        return [OnlyThenStop(self.compile(so)) for _ in range(n)]


def test_constraint_masks_rows_and_finishes_the_sequence(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    engine.admission.constraint_factory = OnlyThenStopFactory([13, 14])
    from jaxserve.sampling_params import StructuredOutputs

    params = SamplingParams(max_tokens=10, temperature=0,
                            structured_outputs=StructuredOutputs(regex="x"))
    add(engine, "c", [10, 11, 12], params)  # the fake rule yields 13, 14, ...
    add(engine, "free", [50], SamplingParams(max_tokens=3, temperature=0))
    out = run_all(engine)
    assert out == {"c": [[13, 14]], "free": [[51, 52, 53]]}
    first = engine.runner.steps[0].sampling
    assert bool(first.any_mask)
    assert first.token_bitmask[0, 0] == 1 << 13 and (first.token_bitmask[1] == -1).all()


def test_structured_outputs_without_a_factory_is_a_clear_error(tiny_tokenizer):
    from jaxserve.sampling_params import StructuredOutputs

    engine = make_engine(tiny_tokenizer)
    with pytest.raises(ParamError, match="structured outputs"):
        add(engine, "c", [1], SamplingParams(structured_outputs=StructuredOutputs(regex="a")))
    with pytest.raises(ValueError, match="exactly one"):
        SamplingParams(structured_outputs=StructuredOutputs(regex="a", choice=["b"])).validate()


def test_decode_only_batches_run_several_steps_per_call(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **{"scheduler.num_decode_steps": 4})
    add(engine, "a", [10, 11], SamplingParams(max_tokens=10, temperature=0))
    add(engine, "b", [50, 51, 52], SamplingParams(max_tokens=6, temperature=0, stop_token_ids=[55]))
    out = run_all(engine)
    assert out == {"a": [list(range(12, 22))], "b": [[53, 54, 55]]}
    num_steps = [s.num_steps for s in engine.runner.steps]
    assert num_steps[0] == 1 and 4 in num_steps  # prefill alone, then decode bursts
    # 10 tokens: 1 from prefill, then bursts of 4 (the last one partly dropped)
    assert len(engine.runner.steps) == 4
    engine.allocator.check_all_free()


def test_multi_step_only_for_batches_up_to_multi_step_max_seqs(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **{"scheduler.num_decode_steps": 4,
                                            "scheduler.multi_step_max_seqs": 1})
    add(engine, "a", [10, 11], SamplingParams(max_tokens=12, temperature=0))
    add(engine, "b", [50, 51], SamplingParams(max_tokens=4, temperature=0))
    out = run_all(engine)
    assert out == {"a": [list(range(12, 24))], "b": [[52, 53, 54, 55]]}
    steps = engine.runner.steps
    # while both decode, one step per call; once "a" is alone, bursts of 4
    assert all(s.num_steps == 1 for s in steps if s.num_seqs[0] > 1)
    assert any(s.num_steps == 4 and s.num_seqs[0] == 1 for s in steps)
    engine.allocator.check_all_free()


def test_multi_step_is_off_for_grammars_penalties_and_min_tokens(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **{"scheduler.num_decode_steps": 4})
    add(engine, "p", [10], SamplingParams(max_tokens=5, temperature=0, presence_penalty=0.5))
    add(engine, "m", [20], SamplingParams(max_tokens=5, temperature=0, min_tokens=3))
    out = run_all(engine)
    assert out == {"p": [[11, 12, 13, 14, 15]], "m": [[21, 22, 23, 24, 25]]}
    assert all(s.num_steps == 1 for s in engine.runner.steps[:3])

    from jaxserve.sampling_params import StructuredOutputs

    def alone(constraint=None, **params) -> tuple[list[int], list[int]]:
        """One request from [10] for 9 tokens: its tokens and each step's num_steps."""
        engine = make_engine(tiny_tokenizer, **{"scheduler.num_decode_steps": 4})
        engine.admission.constraint_factory = ConstantFactory(constraint)
        add(engine, "r", [10], SamplingParams(max_tokens=9, temperature=0, **params))
        tokens = run_all(engine)["r"][0]
        engine.allocator.check_all_free()
        return tokens, [s.num_steps for s in engine.runner.steps]

    expected = list(range(11, 20))
    tokens, free = alone()  # the same request with none of them does run bursts
    assert tokens == expected and 4 in free
    grammar = StructuredOutputs(regex="x")  # the hand-made constraint below stands for it
    for constraint, params in ((None, {"presence_penalty": 0.5}),
                               (OnlyThenStop(expected), {"structured_outputs": grammar})):
        tokens, num_steps = alone(constraint, **params)
        assert tokens == expected and set(num_steps) == {1}, (params, num_steps)
    tokens, num_steps = alone(min_tokens=3)  # one step at a time until 3 tokens are out
    assert tokens == expected and num_steps[:3] == [1, 1, 1] and 4 in num_steps[3:]


def test_out_of_range_top_k_is_refused_not_crashing(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer)
    with pytest.raises(ValueError, match="top_k"):
        add(engine, "k", [1], SamplingParams(top_k=10**30))
    add(engine, "big", [1], SamplingParams(top_k=10**6, max_tokens=2, temperature=0.5))
    assert run_all(engine)["big"][0]  # larger than the vocabulary means no top-k
