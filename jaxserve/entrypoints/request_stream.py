"""One request's deltas as the event loop reads them, and several requests' merged in order of
arrival (host side, no jax). The engine thread hands deltas over in batches; a reader that fell
behind gets everything since its last read as one delta."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from jaxserve.outputs import RequestOutput, merge_delta


class _Aborts(Protocol):
    def abort(self, request_id: str) -> None: ...


class RequestStream:
    """The deltas of one request, read on the event loop; ends after the finished delta."""

    def __init__(self, request_id: str, engine: _Aborts):
        self.request_id = request_id
        self.finished = False
        self._engine = engine
        self._items: deque[RequestOutput] = deque()
        self._error: BaseException | None = None
        self._ready = asyncio.Event()
        self.observer: Callable[[RequestOutput], None] | None = None  # sees each delta read

    def put(self, output: RequestOutput) -> None:
        self._items.append(output)
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        while not self._items:
            if self.finished:
                raise StopAsyncIteration
            if self._error is not None:
                self.finished = True
                raise self._error
            self._ready.clear()
            await self._ready.wait()
        out = self._items.popleft()
        if self._items:  # the reader fell behind: hand over everything as one delta
            out = merge_delta(None, out)
            while self._items:
                out = merge_delta(out, self._items.popleft())
        self.finished = out.finished
        if self.observer is not None:
            self.observer(out)
        return out

    def abort(self) -> None:
        """Stop generating (the reader went away); a no-op once the request has finished."""
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The deltas of several streams as they come, each with its stream's position; leaving
    early (or one stream failing) aborts them all."""
    if len(streams) == 1:  # the common case needs no tasks
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            streams[0].abort()
        return
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(position: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                merged.put_nowait((position, out))
            merged.put_nowait((position, None))
        except Exception as exc:  # noqa: BLE001 - re-raised by the reader below
            merged.put_nowait((position, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            position, item = await merged.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.abort()
