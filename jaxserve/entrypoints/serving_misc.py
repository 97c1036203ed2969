"""The small endpoints: ``/v1/models`` (and one model), ``/health``, ``/metrics``, ``/tokenize``,
``/detokenize``, ``/version``."""

from __future__ import annotations

from litestar import Request, Response

import jaxserve
from jaxserve.entrypoints.errors import bad_request, from_param_error
from jaxserve.entrypoints.metrics import CONTENT_TYPE
from jaxserve.entrypoints.prompts import template_messages
from jaxserve.entrypoints.protocol import ModelCard, ModelList, VersionResponse
from jaxserve.entrypoints.request_body import read_request
from jaxserve.entrypoints.responses import json_response
from jaxserve.entrypoints.state import ServerState
from jaxserve.entrypoints.tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from jaxserve.entrypoints.vllm_fields import check_template, request_template
from jaxserve.sampling_params import ParamError


def _card(state: ServerState) -> ModelCard:
    state.require_ready()
    info = state.info
    return ModelCard(id=state.config.model.model_name, created=state.created,
                     root=str(info.model_dir), max_model_len=info.max_model_len)


def list_models(state: ServerState) -> Response:
    return json_response(ModelList(data=[_card(state)]))


def retrieve_model(state: ServerState, model_id: str) -> Response:
    """One entry of ``list_models``; any other name is OpenAI's 404 ``model_not_found``."""
    state.check_model(model_id)
    return json_response(_card(state))


def health(state: ServerState) -> Response:
    """200 with an empty body once the engine runs; 503 while loading or after it died."""
    state.require_ready()
    return Response(content=b"", status_code=200)


def metrics(state: ServerState) -> Response:
    # the header set whole: a text/* media_type would get a second charset from Litestar
    return Response(content=state.metrics.render(), headers={"content-type": CONTENT_TYPE})


def version() -> Response:
    return json_response(VersionResponse(jaxserve.__version__))


async def tokenize(state: ServerState, request: Request) -> Response:
    req = await read_request(request, TokenizeRequest, state.config.server)
    state.check_model(req.model)
    state.require_ready()
    if req.messages is not None:
        try:
            check_template(req, state.config.server)
        except ParamError as exc:
            raise from_param_error(exc) from None
        ids = await state.prompts.encode_chat(
            template_messages(req.messages), add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message, tools=req.tools,
            template_kwargs=req.chat_template_kwargs,
            add_special_tokens=bool(req.add_special_tokens), chat_template=request_template(req))
    elif req.prompt is not None:
        add_special = True if req.add_special_tokens is None else req.add_special_tokens
        ids = await state.prompts.encode(req.prompt, add_special)
    else:
        raise bad_request("either prompt or messages is required", param="prompt")
    strs = [state.token_str(t) for t in ids] if req.return_token_strs else None
    return json_response(TokenizeResponse(count=len(ids), max_model_len=state.info.max_model_len,
                                          tokens=ids, token_strs=strs))


async def detokenize(state: ServerState, request: Request) -> Response:
    req = await read_request(request, DetokenizeRequest, state.config.server)
    state.check_model(req.model)
    state.require_ready()
    vocab = state.info.vocab_size
    if any(not 0 <= t < vocab for t in req.tokens):
        raise bad_request(f"token ids must be in [0, {vocab})", param="tokens")
    return json_response(DetokenizeResponse(await state.prompts.decode(req.tokens)))
