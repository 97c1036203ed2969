"""The engine behind an event loop: one thread owns the ``LLMEngine`` and runs its step loop.

The engine is not thread-safe, so nothing else calls it. Requests reach the thread as commands on
a ``queue.Queue``, applied between steps; while nothing runs the thread blocks on that queue, so an
idle server burns no CPU. After each step the thread hands all of the step's deltas to the event
loop in one ``call_soon_threadsafe``, where each lands in its request's ``RequestStream``. A slow
client therefore never stalls the batch: its deltas wait in its stream and are merged into one
when it reads again.

If the step loop raises, the engine is dead: every waiting caller gets ``EngineDeadError``, new
requests are refused, so nothing hangs, and ``on_death`` tells the server (which then exits
non-zero, for a supervisor to restart it). ``JAXSERVE_INJECT_FAULT_AFTER_STEPS=N`` makes step
N + 1 raise, for the tests of that path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from jaxserve.engine.admission import AdmittedRequest
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.entrypoints.request_stream import RequestStream, merge_streams
from jaxserve.outputs import RequestOutput

log = logging.getLogger("jaxserve.engine")


__all__ = ["AsyncEngine", "EngineDeadError", "RequestStream", "merge_streams"]


class EngineDeadError(RuntimeError):
    """The step loop failed or stopped; requests in flight cannot finish."""


class StepObserver(Protocol):
    """Called on the engine thread (the metrics layer implements it)."""

    def request_added(self, request_id: str) -> None: ...
    def request_aborted(self, request_id: str) -> None: ...
    def step_done(self, engine: LLMEngine, outputs: list[RequestOutput]) -> None: ...


class AsyncEngine:
    def __init__(self, engine: LLMEngine, observer: StepObserver | None = None,
                 on_death: Callable[[BaseException], None] | None = None):
        """on_death: called on the event loop once the step loop failed (not when stopped)."""
        self.engine = engine
        self.observer = observer
        self.on_death = on_death
        self.dead: BaseException | None = None
        self._commands: queue.Queue[tuple] = queue.Queue()
        self._streams: dict[str, RequestStream] = {}
        self._pending_adds = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- the event-loop side -----------------------------------------------------------------
    def start(self) -> None:
        """Call from the event loop that will read the streams."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="jaxserve-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Abort whatever still runs and end the thread (after the HTTP server drained)."""
        if self._thread is None:
            return
        self._commands.put(("stop",))
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    @property
    def num_waiting(self) -> int:
        """Requests not yet running: queued commands plus the scheduler's waiting queue (a len()
        read from another thread, atomic under the GIL)."""
        return self._pending_adds + len(self.engine.scheduler.waiting)

    async def add_request(self, request_id: str, admitted: AdmittedRequest) -> RequestStream:
        """Queue an admitted request (``engine.admission``, checked off this loop); raises the
        engine's ParamError if its id is already running."""
        return (await self.add_requests([(request_id, admitted)]))[0]

    async def add_requests(self, requests: list[tuple[str, AdmittedRequest]]
                           ) -> list[RequestStream]:
        """Queue several as one command, added between the same two steps, all or none: a
        many-prompt request is never half added, nor added a prompt per step."""
        if self.dead is not None:
            raise EngineDeadError(f"the engine is not running: {self.dead}")
        streams = [RequestStream(request_id, self) for request_id, _ in requests]
        for stream in streams:
            self._streams[stream.request_id] = stream
        accepted = self._loop.create_future()
        self._pending_adds += len(requests)
        self._commands.put(("add", requests, accepted))
        try:
            await accepted
        except BaseException:
            for stream in streams:
                self._streams.pop(stream.request_id, None)
            if not accepted.done() or accepted.cancelled():  # we went away, they may be added
                for stream in streams:
                    self._commands.put(("abort", stream.request_id))
            raise
        finally:
            self._pending_adds -= len(requests)
        return streams

    async def generate(self, request_id: str, admitted: AdmittedRequest
                       ) -> AsyncIterator[RequestOutput]:
        """The deltas of one request; leaving the loop early aborts the request."""
        stream = await self.add_request(request_id, admitted)
        try:
            async for out in stream:
                yield out
        finally:
            stream.abort()

    def abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._commands.put(("abort", request_id))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)
                if out.finished:
                    del self._streams[out.request_id]

    def _fail_all(self, error: BaseException) -> None:
        self.dead = error
        dead = EngineDeadError(f"the engine stopped: {error!r}")
        for stream in self._streams.values():
            stream.fail(dead)
        self._streams.clear()
        while True:  # adds queued after the thread's last look would wait forever
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command[0] == "add" and not command[2].done():
                command[2].set_exception(dead)

    # ---- the engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        fault_after = int(os.environ.get("JAXSERVE_INJECT_FAULT_AFTER_STEPS", "0") or 0)
        steps = 0
        try:
            while self._apply_commands(block=not self.engine.has_unfinished_requests()):
                if self.engine.has_unfinished_requests():
                    steps += 1
                    if fault_after and steps > fault_after:
                        raise RuntimeError(f"injected fault after {fault_after} steps")
                    outputs = self.engine.step()
                    if self.observer is not None:
                        self.observer.step_done(self.engine, outputs)
                    if outputs:
                        self._loop.call_soon_threadsafe(self._deliver, outputs)
            error: BaseException = EngineDeadError("the engine was stopped")
            failed = False
        except BaseException as exc:  # any failure must reach the waiting callers
            log.exception("the engine step loop failed")
            error, failed = exc, True
        try:
            for request_id in list(self.engine.requests):
                self.engine.abort_request(request_id)
        except Exception:  # a broken engine may fail here too; the callers matter
            log.exception("aborting the requests of a failed engine")
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fail_all, error)
            if failed and self.on_death is not None:
                self._loop.call_soon_threadsafe(self.on_death, error)

    def _apply_commands(self, block: bool) -> bool:
        """Apply queued commands; block for the first one when idle. False means stop."""
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            kind = command[0]
            if kind == "stop":
                return False
            if kind == "abort":
                self.engine.abort_request(command[1])
                if self.observer is not None:
                    self.observer.request_aborted(command[1])
            elif kind == "add":
                self._add(*command[1:])

    def _add(self, requests: list[tuple[str, AdmittedRequest]], accepted: asyncio.Future) -> None:
        error, added = None, []
        try:
            for request_id, admitted in requests:
                self.engine.add_request(request_id, admitted)
                added.append(request_id)
                if self.observer is not None:
                    self.observer.request_added(request_id)
        except Exception as exc:  # noqa: BLE001 - the caller decides: a 400 or a 500
            error = exc
            for request_id in added:  # all or none
                self.engine.abort_request(request_id)
                if self.observer is not None:
                    self.observer.request_aborted(request_id)
        self._loop.call_soon_threadsafe(_settle, accepted, error)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
