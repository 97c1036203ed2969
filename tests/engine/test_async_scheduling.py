"""Async scheduling against the fake runner: what the look-ahead step holds, and when the engine
falls back to one step at a time. (tests/engine/test_llm_engine.py runs every engine test in
both modes; tests/engine/test_engine_tiny.py compares the modes on a real model.)"""

from __future__ import annotations

from jaxserve.sampling_params import SamplingParams
from tests.support.fake_engine import add, make_engine, run_all

ASYNC = {"scheduler.async_scheduling": True, "scheduler.num_decode_steps": 1}


def record_launches(engine) -> list:
    """The SchedulerOutput of every step the engine launches, in launch order."""
    launched = []
    launch = engine._launch

    def recording(sched, prev_rows):
        step = launch(sched, prev_rows)
        if step is not None:
            launched.append(sched)
        return step

    engine._launch = recording
    return launched


def test_next_step_is_launched_before_this_one_is_read(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **ASYNC)
    add(engine, "a", [5, 6], SamplingParams(max_tokens=3, temperature=0))
    (out,) = engine.step()  # the prefill's token comes back ...
    assert out.outputs[0].token_ids == [7]
    assert len(engine.runner.steps) == 2  # ... after the decode that reads it was launched
    decode = engine.runner.steps[1]
    assert decode.input_ids[0] == 0 and decode.prev_rows[0] == 0  # token 7 stays on the device
    assert list(decode.prev_rows[1:]) == [-1] * (len(decode.prev_rows) - 1)
    assert run_all(engine, [out]) == {"a": [[7, 8, 9]]}
    # the third token was known to be the last: no step was launched after it
    assert len(engine.runner.steps) == 3
    engine.allocator.check_all_free()


def test_a_stop_in_step_n_drops_the_token_of_step_n_plus_1(tiny_tokenizer):
    engine = make_engine(tiny_tokenizer, **ASYNC)
    launched = record_launches(engine)
    # the fake runner counts up mod 200: 199 -> 0 -> 1 -> 2, the eos id
    add(engine, "a", [198, 199], SamplingParams(max_tokens=20, temperature=0))
    add(engine, "b", [40], SamplingParams(max_tokens=6, temperature=0))
    out = run_all(engine)
    assert out == {"a": [[0, 1, 2]], "b": [[41, 42, 43, 44, 45, 46]]}
    a_rows = [s for s in launched if any(r.seq.request.request_id == "a" for r in s.sample_rows)]
    assert len(a_rows) == 4  # prefill, 2 decodes, and one launched before the eos was seen
    engine.allocator.check_all_free()


def test_rows_the_host_must_prepare_run_one_step_at_a_time(tiny_tokenizer):
    for params in (SamplingParams(max_tokens=4, temperature=0, presence_penalty=0.5),
                   SamplingParams(max_tokens=4, temperature=0, n=2)):
        engine = make_engine(tiny_tokenizer, **ASYNC)
        add(engine, "a", [5, 6], params)
        run_all(engine)
        # a penalty reads the token history; a fork joins after its leader's prefill is read
        assert not any((s.prev_rows >= 0).any() for s in engine.runner.steps[:2])
        engine.allocator.check_all_free()


def test_look_ahead_never_preempts(tiny_tokenizer):
    """5 pages of 4 tokens: two sequences growing to 12 tokens (3 pages) each cannot both fit.
    One step at a time, the second one is preempted; with async scheduling no look-ahead step
    preempts (a look-ahead leaves a sequence without a page waiting: it holds its pages, the
    other one finishes and frees its own)."""
    expected = {"a": [list(range(14, 22))], "b": [list(range(24, 32))]}
    for mode in ({"scheduler.async_scheduling": False, "scheduler.num_decode_steps": 1}, ASYNC):
        engine = make_engine(tiny_tokenizer, **mode, **{"cache.num_pages": 5})
        add(engine, "a", [10, 11, 12, 13], SamplingParams(max_tokens=8, temperature=0))
        add(engine, "b", [20, 21, 22, 23], SamplingParams(max_tokens=8, temperature=0))
        preempts = []
        schedule = engine.scheduler.schedule

        def watch(look_ahead=False, engine=engine, schedule=schedule, preempts=preempts):
            before = engine.scheduler.num_preemptions
            out = schedule(look_ahead)
            preempts.append((look_ahead, engine.scheduler.num_preemptions - before))
            return out

        engine.scheduler.schedule = watch
        assert run_all(engine) == expected
        engine.allocator.check_all_free()
        if mode is ASYNC:
            assert any(ahead for ahead, _ in preempts)
            assert not any(n for ahead, n in preempts if ahead)
        else:  # the same workload does need a preemption when steps are scheduled one by one
            assert not any(ahead for ahead, _ in preempts)
            assert engine.scheduler.num_preemptions > 0
