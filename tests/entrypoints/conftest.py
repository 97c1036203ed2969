"""Fixtures of the HTTP server tests: the live server, and clients that check the engine is idle
with every page free after each test.

``live_server`` is the session's tiny engine (``tiny_llm``) served once for the session; a module
that needs another engine (a tools template, SmolLM2) overrides ``live_server`` with a module
fixture that serves its own through ``tests.support.live_server.serve``, and the clients follow.
"""

from __future__ import annotations

import openai
import pytest

from tests.support.live_server import api_client, serve


@pytest.fixture(scope="session")
def live_server(tiny_llm):
    with serve(tiny_llm) as live:
        yield live


@pytest.fixture
def http(live_server):
    """An authorised httpx client with an ``sse`` method for streams."""
    with api_client(live_server) as client:
        yield client


@pytest.fixture
def openai_client(live_server):
    """The openai SDK pointed at the live server, without retries."""
    yield openai.OpenAI(base_url=live_server.base_url, api_key=live_server.api_key,
                        max_retries=0)
    live_server.wait_idle()
