"""``/openapi.json`` and ``/docs`` (Swagger UI), as vLLM serves them.

Litestar writes the paths from the route handlers, but the handlers read their bodies themselves
with msgspec (so errors keep OpenAI's shape), so their annotations say only ``Request`` and
``Response``. The request and response Structs are declared here instead, their JSON schemas
made by msgspec and added to the document Litestar built.
"""

from __future__ import annotations

import msgspec
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Reference, RequestBody

import jaxserve
from jaxserve.entrypoints.chat_protocol import ChatCompletionRequest, ChatCompletionResponse
from jaxserve.entrypoints.completion_protocol import CompletionRequest, CompletionResponse
from jaxserve.entrypoints.protocol import ErrorResponse, ModelCard, ModelList, VersionResponse
from jaxserve.entrypoints.responses_protocol import (
    ResponseDeleted,
    ResponsesRequest,
    ResponsesResponse,
)
from jaxserve.entrypoints.tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

# (method, path) -> (request body, 200 body); a stream's chunks are not described, as in vLLM
_BODIES: dict[tuple[str, str], tuple[type | None, type]] = {
    ("post", "/v1/chat/completions"): (ChatCompletionRequest, ChatCompletionResponse),
    ("post", "/v1/completions"): (CompletionRequest, CompletionResponse),
    ("post", "/v1/responses"): (ResponsesRequest, ResponsesResponse),
    ("get", "/v1/responses/{response_id}"): (None, ResponsesResponse),
    ("delete", "/v1/responses/{response_id}"): (None, ResponseDeleted),
    ("post", "/v1/responses/{response_id}/cancel"): (None, ResponsesResponse),
    ("get", "/v1/models"): (None, ModelList),
    ("get", "/v1/models/{model_id}"): (None, ModelCard),
    ("post", "/tokenize"): (TokenizeRequest, TokenizeResponse),
    ("post", "/detokenize"): (DetokenizeRequest, DetokenizeResponse),
    ("get", "/version"): (None, VersionResponse),
}
_REF = "#/components/schemas/{name}"


def openapi_config() -> OpenAPIConfig:
    # Swagger UI at /docs; Litestar's fallback for other /docs/* paths stays under /docs
    return OpenAPIConfig(title="jaxserve", version=jaxserve.__version__, path="/docs",
                         render_plugins=[SwaggerRenderPlugin(path="/")])


def _json(name: str) -> dict[str, OpenAPIMediaType]:
    return {"application/json": OpenAPIMediaType(schema=Reference(ref=_REF.format(name=name)))}


def describe_bodies(app: Litestar) -> None:
    """Add the Structs' schemas to the app's document, before it is first served."""
    document = app.openapi_schema
    types = {t for pair in _BODIES.values() for t in pair if t is not None} | {ErrorResponse}
    _, components = msgspec.json.schema_components(sorted(types, key=lambda t: t.__name__),
                                                   ref_template=_REF)
    document.components.schemas = {**(document.components.schemas or {}), **components}
    error = OpenAPIResponse(description="OpenAI's error object", content=_json("ErrorResponse"))
    for (method, path), (request, response) in _BODIES.items():
        operation = getattr(document.paths[path], method)
        if request is not None:
            operation.request_body = RequestBody(content=_json(request.__name__), required=True)
        operation.responses = {"200": OpenAPIResponse(description="OK",
                                                      content=_json(response.__name__)),
                               "default": error}
