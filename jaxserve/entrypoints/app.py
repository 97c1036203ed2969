"""The Litestar app: routes, API-key check, and one error shape for every failure.

``create_app(engine, info, config)`` serves an engine that is already built (tests do this);
``create_app(None, None, config)`` serves ``/health`` 503 until ``attach_threadsafe`` hands it
one (``serve`` does this, so the port answers while the model compiles).
"""

from __future__ import annotations

import hmac
import logging

from litestar import Litestar, Request, Response, delete, get, post
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from jaxserve.config import Config
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.entrypoints import serving_misc, serving_responses
from jaxserve.entrypoints.async_engine import EngineDeadError
from jaxserve.entrypoints.errors import APIError
from jaxserve.entrypoints.openapi import describe_bodies, openapi_config
from jaxserve.entrypoints.request_log import RequestLog
from jaxserve.entrypoints.responses import ClientDisconnected, error_response
from jaxserve.entrypoints.serving_chat import create_chat_completion
from jaxserve.entrypoints.serving_completion import create_completion
from jaxserve.entrypoints.state import ServerState
from jaxserve.interfaces import EngineInfo

log = logging.getLogger("jaxserve.server")


def _server(request: Request) -> ServerState:
    return request.app.state.server


@post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await create_chat_completion(_server(request), request)


@post("/v1/completions")
async def completions(request: Request) -> Response:
    return await create_completion(_server(request), request)


@post("/v1/responses")
async def responses(request: Request) -> Response:
    return await serving_responses.create_response(_server(request), request)


@get("/v1/responses/{response_id:str}")
async def retrieve_response(request: Request, response_id: FromPath[str]) -> Response:
    return serving_responses.retrieve_response(_server(request), response_id)


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: Request, response_id: FromPath[str]) -> Response:
    return serving_responses.delete_response(_server(request), response_id)


@post("/v1/responses/{response_id:str}/cancel")
async def cancel_response(request: Request, response_id: FromPath[str]) -> Response:
    return serving_responses.cancel_response(_server(request), response_id)


@get("/v1/models")
async def models(request: Request) -> Response:
    return serving_misc.list_models(_server(request))


@get("/v1/models/{model_id:path}")
async def model(request: Request, model_id: FromPath[str]) -> Response:
    # a path parameter: served names may hold a slash (HuggingFaceTB/SmolLM2-135M-Instruct)
    return serving_misc.retrieve_model(_server(request), model_id.lstrip("/"))


@get("/health")
async def health(request: Request) -> Response:
    return serving_misc.health(_server(request))


@get("/metrics")
async def metrics(request: Request) -> Response:
    return serving_misc.metrics(_server(request))


@get("/version")
async def version() -> Response:
    return serving_misc.version()


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request) -> Response:
    # vLLM's path; /docs embeds the same document (Litestar also serves it at /docs/openapi.json)
    return Response(content=request.app.openapi_schema.to_schema())


@post("/tokenize")
async def tokenize(request: Request) -> Response:
    return await serving_misc.tokenize(_server(request), request)


@post("/detokenize")
async def detokenize(request: Request) -> Response:
    return await serving_misc.detokenize(_server(request), request)


# ---- API key ------------------------------------------------------------------------------------
def _unauthorised(request: Request) -> Response | None:
    """Only /v1 needs the key, as in vLLM: health checks and scrapers carry none."""
    key = _server(request).config.server.api_key
    if not key or not request.url.path.startswith("/v1"):
        return None
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
        return None
    return error_response(APIError("Incorrect API key provided.", status=401,
                                   code="invalid_api_key"))


async def _check_api_key(request: Request) -> Response | None:
    return _unauthorised(request)


# ---- errors -------------------------------------------------------------------------------------
def _api_error(_: Request, exc: APIError) -> Response:
    return error_response(exc)


def _http_error(request: Request, exc: HTTPException) -> Response:
    # the framework's own refusals: unknown route, wrong method, body too large; no route ran
    # before_request for the first two, so the key is checked here
    if exc.status_code in (404, 405) and (refused := _unauthorised(request)) is not None:
        return refused
    return error_response(APIError(exc.detail, status=exc.status_code, headers=exc.headers))


def _engine_dead(_: Request, exc: EngineDeadError) -> Response:
    return error_response(APIError(str(exc), status=503))


def _disconnected(_: Request, exc: ClientDisconnected) -> Response:
    return Response(content=b"", status_code=499)  # nobody reads it; nginx's "client closed"


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(APIError(f"internal error: {type(exc).__name__}", status=500))


def create_app(engine: LLMEngine | None, info: EngineInfo | None, config: Config, *,
               max_waiting_requests: int | None = None) -> Litestar:
    server = ServerState(config, max_waiting_requests=max_waiting_requests)

    async def start(app: Litestar) -> None:
        server.start(engine, info)

    async def stop(app: Litestar) -> None:
        await server.close()

    app = Litestar(
        route_handlers=[chat_completions, completions, responses, retrieve_response,
                        delete_response, cancel_response, models, model, health, metrics,
                        version, tokenize, detokenize, openapi_json],
        before_request=_check_api_key,
        exception_handlers={APIError: _api_error, HTTPException: _http_error,
                            EngineDeadError: _engine_dead, ClientDisconnected: _disconnected,
                            Exception: _unexpected},
        cors_config=CORSConfig(allow_origins=["*"]),  # vLLM's default: browser clients work
        on_startup=[start],
        on_shutdown=[stop],
        openapi_config=openapi_config(),
        logging_config=None,
        request_max_body_size=config.server.max_body_bytes,
    )
    app.state.server = server
    describe_bodies(app)
    # around the whole handler, so 404s and refusals carry x-request-id and get a line too
    app.asgi_handler = RequestLog(app.asgi_handler, config.server.log_requests,
                                  config.server.max_request_id_length)
    return app
