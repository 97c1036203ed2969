"""What every handler shares: the engine, its admission, the tokenizer thread, metrics, and the
checks that come before a request reaches the engine (model name, readiness, capacity).

The state exists before the engine does: ``serve`` starts the HTTP server first, so ``/health``
can answer 503 while the model loads and compiles, and attaches the engine once it is built.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

from jaxserve.config import Config
from jaxserve.engine.admission import Admission, AdmittedRequest
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.entrypoints.async_engine import AsyncEngine, EngineDeadError, RequestStream
from jaxserve.entrypoints.errors import APIError, from_param_error
from jaxserve.entrypoints.logprobs import TokenStrings
from jaxserve.entrypoints.metrics import EngineMetrics
from jaxserve.entrypoints.prompts import Prompts
from jaxserve.entrypoints.response_store import ResponseStore
from jaxserve.entrypoints.sampling import generation_defaults
from jaxserve.interfaces import EngineInfo
from jaxserve.sampling_params import ParamError

RETRY_AFTER_SECONDS = 1


def random_id() -> str:
    return uuid.uuid4().hex


class ServerState:
    def __init__(self, config: Config, *, max_waiting_requests: int | None = None):
        self.config = config
        # waiting requests past which new ones get 503 + Retry-After instead of a long queue
        self.max_waiting_requests = (max_waiting_requests or config.server.max_waiting_requests
                                     or 64 * config.scheduler.max_num_seqs)
        self.metrics = EngineMetrics(config.model.model_name)
        self.responses = ResponseStore(config.server.responses_store_size,
                                       config.server.responses_store_ttl)
        self.engine: AsyncEngine | None = None
        self.admission: Admission | None = None  # the engine's checks, run on worker threads
        self.info: EngineInfo | None = None
        self.prompts: Prompts | None = None
        self.token_str: TokenStrings | None = None
        self.defaults: dict = {}
        self.created = int(time.time())
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()  # the app's startup ran: self.loop is set
        # what to do when the engine's step loop fails (serve: exit non-zero); None: nothing
        self.on_engine_death: Callable[[BaseException], None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, engine: LLMEngine | None, info: EngineInfo | None) -> None:
        """The app's startup hook, on the event loop."""
        self.loop = asyncio.get_running_loop()
        self.started.set()
        if engine is not None:
            self.attach(engine, info)

    def attach(self, engine: LLMEngine, info: EngineInfo) -> None:
        """Start serving with a built engine; call on the event loop."""
        self.info = info
        self.admission = engine.admission
        self.defaults = generation_defaults(info.model_dir)
        self.prompts = Prompts(engine.tokenizer)
        self.token_str = TokenStrings(engine.tokenizer)
        self.metrics.attach(engine)
        self.engine = AsyncEngine(engine, observer=self.metrics, on_death=self.on_engine_death)
        self.engine.start()

    def attach_threadsafe(self, engine: LLMEngine, info: EngineInfo) -> None:
        """attach() from the thread that built the engine."""
        self.started.wait()
        self.loop.call_soon_threadsafe(self.attach, engine, info)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.prompts is not None:
            self.prompts.close()

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.dead is None

    # ---- checks ------------------------------------------------------------------------------
    def require_ready(self) -> AsyncEngine:
        if self.engine is None:
            raise APIError("the model is still loading", status=503,
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS * 5)})
        if self.engine.dead is not None:
            raise APIError(f"the engine has stopped: {self.engine.dead}", status=503)
        return self.engine

    def check_model(self, model: str | None) -> None:
        """vLLM serves its one model when none is named; a wrong name is OpenAI's 404."""
        if model is not None and model != self.config.model.model_name:
            raise APIError(f"The model `{model}` does not exist.", status=404, param="model",
                           code="model_not_found")

    def check_capacity(self, engine: AsyncEngine) -> None:
        if engine.num_waiting >= self.max_waiting_requests:
            raise APIError(f"the server is overloaded ({engine.num_waiting} requests waiting); "
                           "retry later", status=503, code="server_overloaded",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    async def submit(self, requests: list[AdmittedRequest]) -> list[RequestStream]:
        """Hand admitted requests to the engine as one unit; every refusal becomes an APIError,
        and none of them is left running."""
        engine = self.require_ready()
        self.check_capacity(engine)
        try:
            return await engine.add_requests([(random_id(), a) for a in requests])
        except EngineDeadError as exc:
            raise APIError(str(exc), status=503) from None
        except ParamError as exc:  # a request id already running
            raise from_param_error(exc) from None
