"""HTTP plumbing shared by the endpoints: JSON and SSE responses, and watching for a client that
hangs up before a non-streamed reply is ready.

Server-sent events carry only ``data:`` lines: no comments and no keep-alive pings, because
``vllm bench serve`` drops a streamed response when it meets one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from jaxserve.entrypoints.errors import APIError

DONE = b"data: [DONE]\n\n"
_encoder = msgspec.json.Encoder()


def json_response(body: msgspec.Struct, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(content=_encoder.encode(body), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(error: APIError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def sse_event(body: msgspec.Struct) -> bytes:
    return b"data: " + _encoder.encode(body) + b"\n\n"


def sse_response(events: AsyncIterator[bytes]) -> Stream:
    # X-Accel-Buffering: a proxy (nginx) in front must pass tokens through as they come
    return Stream(events, status_code=200, media_type="text/event-stream",
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class ClientDisconnected(Exception):
    """The client hung up before its (non-streamed) reply was ready."""


async def unless_disconnected(request: Request, work: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``work`` while listening for the client hanging up; if it does, cancel the work (whose
    own cleanup aborts its engine requests) and raise ClientDisconnected.

    A streamed reply does not need this: the framework stops the stream when the client leaves.
    """

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work())
    watcher = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected()
    return task.result()
