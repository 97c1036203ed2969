"""A live uvicorn server on 127.0.0.1 for an engine, with an API key set so every test also
goes through the key check, and a client for it that reads SSE streams.

tests/entrypoints/conftest.py serves the session's tiny engine with it; modules that need another
engine (a tools template, SmolLM2) serve theirs with ``serve`` in a module fixture.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import msgspec
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


@contextmanager
def serve(llm, **server) -> Iterator[LiveServer]:
    """Serve an LLM's engine over HTTP, with the API key set (and any other ``server`` fields
    given), until the block ends."""
    config = msgspec.structs.replace(llm.config, server=ServerConfig(api_key=API_KEY, **server))
    server, thread, url = run_uvicorn(create_app(llm.engine, llm.info, config))
    try:
        yield LiveServer(url, llm.engine, llm.engine.tokenizer, llm.info.model_name,
                         llm.info.max_model_len)
    finally:
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


@contextmanager
def api_client(live: LiveServer) -> Iterator[ApiClient]:
    """An authorised client; when the block ends the engine must be idle with every page free."""
    with ApiClient(base_url=live.url, timeout=60,
                   headers={"Authorization": f"Bearer {live.api_key}"}) as client:
        yield client
    live.wait_idle()


