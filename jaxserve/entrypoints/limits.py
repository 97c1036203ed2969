"""The server's limits on what one request may ask (``server`` in the config), checked right
after decoding: each refusal a 400 naming the field and the limit."""

from __future__ import annotations

from typing import Any

from jaxserve.config import ServerConfig
from jaxserve.entrypoints.errors import bad_request


def check_request(req: Any, limits: ServerConfig) -> None:
    """``request_id`` and ``stop``, shared by chat and completions."""
    if req.request_id is not None and len(req.request_id) > limits.max_request_id_length:
        raise bad_request(f"request_id may be at most {limits.max_request_id_length} characters "
                          f"(server.max_request_id_length), got {len(req.request_id)}",
                          param="request_id")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop_strings:
        raise bad_request(f"stop may hold at most {limits.max_stop_strings} strings "
                          f"(server.max_stop_strings), got {len(stop)}", param="stop")
    for s in stop:
        if not s:  # it would match before any output; silently dropping it hides the mistake
            raise bad_request("stop strings must not be empty", param="stop")
        if len(s) > limits.max_stop_string_length:
            raise bad_request(f"each stop string may be at most {limits.max_stop_string_length} "
                              f"characters (server.max_stop_string_length), got {len(s)}",
                              param="stop")


def check_prompt_count(count: int, limits: ServerConfig) -> None:
    if count > limits.max_prompts_per_request:
        raise bad_request(f"prompt may hold at most {limits.max_prompts_per_request} prompts "
                          f"(server.max_prompts_per_request), got {count}", param="prompt")
