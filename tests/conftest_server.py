"""Fixtures of the HTTP server tests: one live uvicorn server on 127.0.0.1 for the session,
serving the session's tiny engine (``tiny_llm`` in conftest.py), with an API key set so every
test also goes through the key check.

Test modules load it with ``pytest_plugins = ["tests.conftest_server"]`` and reach its helpers
through the ``live_server`` fixture (importing this module from a test module would defeat
pytest's assertion rewriting here).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import httpx
import msgspec
import pytest
import uvicorn

from jaxserve.config import ServerConfig
from jaxserve.entrypoints.app import create_app

API_KEY = "test-key"


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:PORT
    engine: object  # the LLMEngine behind it
    tokenizer: object
    model: str
    max_model_len: int
    api_key: str = API_KEY

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until the engine holds no request and every KV page is free again."""
        deadline = time.monotonic() + timeout
        while self.engine.has_unfinished_requests() or self.engine.allocator.usage > 0:
            assert time.monotonic() < deadline, (
                f"engine still busy: {list(self.engine.requests)}, "
                f"page usage {self.engine.allocator.usage}")
            time.sleep(0.02)
        self.engine.allocator.check_all_free()


def run_uvicorn(app, **config) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Serve app on a free loopback port in a thread; returns once it accepts connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def live_server(tiny_llm):
    config = msgspec.structs.replace(tiny_llm.config, server=ServerConfig(api_key=API_KEY))
    app = create_app(tiny_llm.engine, tiny_llm.info, config)
    server, thread, url = run_uvicorn(app)
    yield LiveServer(url, tiny_llm.engine, tiny_llm.engine.tokenizer, tiny_llm.info.model_name,
                     tiny_llm.info.max_model_len)
    server.should_exit = True
    thread.join(timeout=30)


class ApiClient(httpx.Client):
    def sse(self, path: str, body: dict) -> list[dict | str]:
        """POST a streaming request; the data of each event, decoded JSON or the literal
        "[DONE]". Every non-empty line must be a data line: no comments, no keep-alives."""
        with self.stream("POST", path, json={**body, "stream": True}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            events = []
            for line in response.iter_lines():
                if not line:
                    continue
                assert line.startswith("data: "), f"not a data line: {line!r}"
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else msgspec.json.decode(data))
        return events


@pytest.fixture
def http(live_server):
    """An authorised client; after the test the engine must be idle with every page free."""
    with ApiClient(base_url=live_server.url, timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client
    live_server.wait_idle()


