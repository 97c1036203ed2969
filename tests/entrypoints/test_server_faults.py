"""An engine fault (an exception inside a step, through the test hook): every request in flight
gets an error response or an error event and [DONE], none hangs, and the process exits non-zero
so a supervisor restarts it."""

from __future__ import annotations

import threading
import time

import httpx
import msgspec

from tests.support.subprocess_server import start_server, stop


def test_a_fault_in_a_step_fails_every_request_and_exits_non_zero(tmp_path):
    proc, url, log = start_server(tmp_path, env={"JAXSERVE_INJECT_FAULT_AFTER_STEPS": "6"})
    long = {"prompt": "hi", "max_tokens": 200, "ignore_eos": True}
    plain: dict = {}

    def unstreamed() -> None:
        try:
            plain["response"] = httpx.post(url + "/v1/completions", json=long, timeout=60)
        except httpx.HTTPError as exc:  # the process went away first
            plain["error"] = exc

    try:
        other = threading.Thread(target=unstreamed)
        other.start()
        with (httpx.Client(base_url=url, timeout=60) as client,
              client.stream("POST", "/v1/completions", json={**long, "stream": True}) as stream):
            lines = [line for line in stream.iter_lines() if line]
        other.join(timeout=60)
        assert not other.is_alive()
        assert lines[-1] == "data: [DONE]"
        error = msgspec.json.decode(lines[-2][6:])
        assert "injected fault" in error["error"]["message"]
        if "response" in plain:
            assert plain["response"].status_code >= 500
        started = time.monotonic()
        assert proc.wait(timeout=30) != 0, log.read_text()
        assert time.monotonic() - started < 30
        assert "the engine failed" in log.read_text()
    finally:
        stop(proc)
