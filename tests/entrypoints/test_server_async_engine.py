"""The engine thread and the server's states, on engines with a fake runner (no compile):
abort on early exit, merged deltas for a slow reader, a full waiting queue, an engine crash,
and a server whose engine is still loading."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from jaxserve.config import load_config
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.entrypoints.app import create_app
from jaxserve.entrypoints.async_engine import AsyncEngine, EngineDeadError
from jaxserve.interfaces import EngineInfo
from jaxserve.sampling_params import ParamError, SamplingParams
from tests.support.configs import TINY_CONFIG
from tests.support.fake_runner import FakeRunner
from tests.support.live_server import run_uvicorn

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class GatedRunner(FakeRunner):
    """Each step waits until the test opens the gate."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def execute(self, inputs):
        self.entered.set()
        # a safety net against a hung test, not a timing check: 30 s ran out once on a loaded
        # CI machine (the engine then died and the overload test saw its 503 instead)
        assert self.gate.wait(120), "the test never opened the gate"
        return super().execute(inputs)


class CrashingRunner(FakeRunner):
    """Works for `good_steps` steps, then fails as a broken device would."""

    def __init__(self, good_steps: int):
        super().__init__()
        self.good_steps = good_steps

    def execute(self, inputs):
        if len(self.steps) >= self.good_steps:
            raise RuntimeError("device lost")
        return super().execute(inputs)


@pytest.fixture
def make_engine(tiny_model_dir, tiny_tokenizer):
    config = load_config(TINY_CONFIG)

    def make(runner=None) -> tuple[LLMEngine, EngineInfo]:
        engine = LLMEngine(config, runner or FakeRunner(), tiny_tokenizer, max_model_len=512,
                           vocab_size=259, eos_token_ids=(2,))
        info = EngineInfo(tiny_model_dir, "tiny-random-llama", 512, 259, (2,), "fake", 0.0, 0.0)
        return engine, info

    return make


# ---- AsyncEngine on its own ---------------------------------------------------------------------
def test_generate_streams_then_leaving_early_aborts(make_engine):
    engine, _ = make_engine()

    async def main():
        async_engine = AsyncEngine(engine)
        async_engine.start()
        admit = engine.admission.admit
        whole = admit([5, 6, 7], SamplingParams(max_tokens=5, ignore_eos=True))
        outs = [o async for o in async_engine.generate("whole", whole)]
        early = admit([5, 6, 7], SamplingParams(max_tokens=400, ignore_eos=True))
        async for _ in async_engine.generate("early", early):
            break  # the consumer goes away after one delta
        for _ in range(100):
            if not engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.01)
        await async_engine.stop()
        return outs

    outs = asyncio.run(main())
    assert [t for o in outs for t in o.outputs[0].token_ids] == [8, 9, 10, 11, 12]  # last + 1
    assert outs[-1].finished and not engine.has_unfinished_requests()
    engine.allocator.check_all_free()


def test_refusals_raise_at_admission_before_the_engine_sees_them(make_engine):
    engine, _ = make_engine()
    with pytest.raises(ParamError) as too_long:
        engine.admission.admit([5] * 600, SamplingParams())
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(ParamError, match="^temperature") as hot:
        engine.admission.admit([5], SamplingParams(temperature=3))
    assert hot.value.param == "temperature"
    assert not engine.has_unfinished_requests()


def test_slow_reader_gets_merged_deltas(make_engine):
    engine, _ = make_engine()

    async def main():
        async_engine = AsyncEngine(engine)
        async_engine.start()
        slow = engine.admission.admit([5], SamplingParams(max_tokens=6, ignore_eos=True))
        stream = await async_engine.add_request("slow", slow)
        while engine.has_unfinished_requests():  # do not read until the engine is done
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        outs = [o async for o in stream]
        await async_engine.stop()
        return outs

    (out,) = asyncio.run(main())
    assert out.outputs[0].token_ids == [6, 7, 8, 9, 10, 11] and out.finished


def test_crash_fails_waiting_callers(make_engine):
    engine, _ = make_engine(CrashingRunner(good_steps=2))

    async def main():
        async_engine = AsyncEngine(engine)
        async_engine.start()
        with pytest.raises(EngineDeadError):
            async for _ in async_engine.generate(
                    "x", engine.admission.admit([5], SamplingParams(max_tokens=50))):
                pass
        with pytest.raises(EngineDeadError):
            await async_engine.add_request("y", engine.admission.admit([5], SamplingParams()))
        await async_engine.stop()

    asyncio.run(asyncio.wait_for(main(), timeout=20))


# ---- the server around such engines -------------------------------------------------------------
def test_full_waiting_queue_is_503_with_retry_after(make_engine):
    runner = GatedRunner()
    engine, info = make_engine(runner)
    app = create_app(engine, info, load_config(TINY_CONFIG), max_waiting_requests=1)
    with TestClient(app, timeout=30) as client:
        replies: list = []
        first = threading.Thread(target=lambda: replies.append(
            client.post("/v1/chat/completions", json=HELLO)))
        first.start()
        assert runner.entered.wait(10)  # the first request is inside a step, which blocks
        second = threading.Thread(target=lambda: replies.append(
            client.post("/v1/chat/completions", json=HELLO)))
        second.start()
        deadline = time.monotonic() + 10
        while app.state.server.engine.num_waiting < 1:  # the second waits for the step
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = client.post("/v1/chat/completions", json=HELLO)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "server_overloaded"
        runner.gate.set()
        first.join(30)
        second.join(30)
        assert [r.status_code for r in replies] == [200, 200]


def test_engine_crash_mid_stream_is_an_error_event(make_engine):
    engine, info = make_engine(CrashingRunner(good_steps=3))
    app = create_app(engine, info, load_config(TINY_CONFIG))
    with TestClient(app, timeout=30) as client:
        body = {**HELLO, "max_tokens": 50, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        error = msgspec.json.decode(lines[-2][len("data: "):])
        assert error["error"]["type"] == "server_error"
        assert "device lost" in error["error"]["message"]
        after = client.post("/v1/chat/completions", json=HELLO)
        assert after.status_code == 503 and "device lost" in after.json()["error"]["message"]
        assert client.get("/health").status_code == 503


def test_loading_server_answers_503_then_200(make_engine):
    engine, info = make_engine()
    app = create_app(None, None, load_config(TINY_CONFIG))
    with TestClient(app, timeout=30) as client:
        assert client.get("/health").status_code == 503
        loading = client.post("/v1/chat/completions", json=HELLO)
        assert loading.status_code == 503 and "Retry-After" in loading.headers
        assert client.get("/metrics").status_code == 200
        app.state.server.attach_threadsafe(engine, info)
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200


class SteppedRunner(FakeRunner):
    """Each step waits for the test to allow one more."""

    def __init__(self):
        super().__init__()
        self.allowed = threading.Semaphore(0)
        self.entered = threading.Event()

    def execute(self, inputs):
        self.entered.set()
        assert self.allowed.acquire(timeout=120), "the test never allowed the step"
        return super().execute(inputs)


def test_a_many_prompt_completion_is_added_at_once_and_aborted_when_its_client_leaves(
        make_engine):
    runner = SteppedRunner()
    engine, info = make_engine(runner)
    app = create_app(engine, info, load_config(TINY_CONFIG))
    server, thread, url = run_uvicorn(app)
    body = {"prompt": [[5, 6, 7]] * 8, "max_tokens": 400, "ignore_eos": True}
    try:
        def leave_early() -> None:  # a client that gives up while the first step runs
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/v1/completions", json=body, timeout=1.0)

        client = threading.Thread(target=leave_early)
        client.start()
        assert runner.entered.wait(10)
        deadline = time.monotonic() + 10
        while len(engine.requests) < 8:  # all eight were added before the first step ...
            assert time.monotonic() < deadline, f"{len(engine.requests)} of 8 added"
            time.sleep(0.01)
        client.join(10)
        deadline = time.monotonic() + 10
        async_engine = app.state.server.engine
        while async_engine._streams:  # ... and the client's leaving aborts them all
            assert time.monotonic() < deadline, "the disconnect was not noticed"
            time.sleep(0.01)
        # the step under way, and the one async scheduling launched behind it, end; the aborts
        # apply before any other (a third step would block here for good)
        runner.allowed.release(2)
        deadline = time.monotonic() + 10
        while engine.has_unfinished_requests():
            assert time.monotonic() < deadline, f"still running: {list(engine.requests)}"
            time.sleep(0.01)
        engine.allocator.check_all_free()
    finally:
        runner.allowed.release(1000)
        server.should_exit = True
        thread.join(30)


def test_limits_from_the_config_apply(make_engine):
    engine, info = make_engine()
    config = load_config(TINY_CONFIG, {"server.max_body_bytes": 2000,
                                       "server.max_nesting_depth": 4,
                                       "server.max_prompts_per_request": 2})
    with TestClient(create_app(engine, info, config), timeout=30) as client:
        big = client.post("/v1/completions", json={"prompt": "x" * 3000})
        assert big.status_code == 413 and set(big.json()["error"]) >= {"message", "type"}
        deep = client.post("/v1/completions", json={"prompt": "hi", "x": [[[[1]]]]})
        assert deep.status_code == 400 and "max_nesting_depth" in deep.json()["error"]["message"]
        many = client.post("/v1/completions", json={"prompt": ["a", "b", "c"], "max_tokens": 1})
        assert many.status_code == 400 and many.json()["error"]["param"] == "prompt"
        ok = client.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 1})
        assert ok.status_code == 200, ok.text
