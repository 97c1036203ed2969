"""``jaxserve run``: bind the port at once, build the engine beside it, serve until SIGTERM.

The port answers from the first second (``/health`` says 503 while the model loads and each
bucket compiles, with the progress on stderr), so an orchestrator can tell "starting" from
"down". On SIGTERM or Ctrl-C uvicorn stops accepting connections, lets every request in flight
finish (streams included; ``server.drain_timeout`` bounds the wait), then the app's shutdown stops
the engine thread and the process exits 0; a second signal exits at once.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
from types import FrameType

import uvicorn

from jaxserve.config import Config
from jaxserve.entrypoints.app import create_app
from jaxserve.entrypoints.state import ServerState

log = logging.getLogger("jaxserve.server")


def _build_in_background(config: Config, state: ServerState, server: uvicorn.Server,
                         failed: threading.Event) -> threading.Thread:
    def build() -> None:
        from jaxserve.builder import build_engine

        try:
            engine, info = build_engine(config, progress=True, freeze=True)
        except BaseException:  # any failure must stop the server, not hang it
            log.exception("building the engine failed")
            failed.set()
            server.should_exit = True
            return
        finally:
            gc.enable()  # `jaxserve run` paused it for the start (gc_policy.py)
        state.attach_threadsafe(engine, info)
        log.info("ready: serving %s on http://%s:%d", info.model_name, config.server.host,
                 config.server.port)

    # daemon: a SIGTERM during the compile must not wait for it to finish
    thread = threading.Thread(target=build, name="jaxserve-build", daemon=True)
    thread.start()
    return thread


def _log_to_stderr() -> None:
    """jaxserve's own log lines, in the style of the build progress; other libraries' INFO
    chatter (jax's backend probing) stays off."""
    logger = logging.getLogger("jaxserve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[jaxserve] %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class _Server(uvicorn.Server):
    """uvicorn with jaxserve's signals: the first SIGTERM or SIGINT drains, then the process
    exits 0 (uvicorn re-raises the signal, a 143 that reads as a crash); a second exits at once."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            log.warning("second %s: exiting without draining", signal.Signals(sig).name)
            os._exit(128 + sig)
        self.should_exit = True


def follow(config: Config) -> None:
    """A follower process (``--node-rank`` > 0): build the same engine, serve no port, run rank
    0's steps on this process's devices until rank 0 stops them."""
    from jaxserve.builder import build_engine

    try:
        engine, _ = build_engine(config, progress=True, freeze=True)
    finally:
        gc.enable()
    log.info("rank %d ready: following rank 0 at %s:%d", config.parallel.node_rank,
             config.parallel.master_addr, config.parallel.master_port)
    engine.runner.follow()
    log.info("rank 0 stopped; exiting")


def serve(config: Config) -> None:
    """Serve the OpenAI-compatible API; blocks until the server is told to stop."""
    _log_to_stderr()
    if config.parallel.node_rank > 0:
        follow(config)
        return
    app = create_app(None, None, config)
    state: ServerState = app.state.server
    server = _Server(uvicorn.Config(
        app, host=config.server.host, port=config.server.port, lifespan="on",
        log_level="info", access_log=False,
        # drain: every request in flight finishes, or is cut after this many seconds
        timeout_graceful_shutdown=config.server.drain_timeout,
    ))
    failed = threading.Event()
    died: list[BaseException] = []

    def engine_died(error: BaseException) -> None:  # on the event loop; the callers have errors
        died.append(error)
        server.should_exit = True

    state.on_engine_death = engine_died
    _build_in_background(config, state, server, failed)
    server.run()
    runner = None if state.engine is None else state.engine.engine.runner
    channel = getattr(runner, "channel", None)
    if channel is not None:  # the engine thread has stopped: no step is in flight
        channel.send_stop()
    if died:
        sys.exit(f"jaxserve: the engine failed ({died[0]!r}); exiting so a supervisor restarts it")
    if failed.is_set():
        sys.exit("jaxserve: the engine could not be built (see the error above)")
