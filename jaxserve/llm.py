"""Offline use without HTTP: ``jaxserve.LLM(model=...).generate(prompts, params)`` and ``.chat``.

``LLM`` takes vLLM's keywords (``model``, ``dtype``, ``max_model_len``, ...), a config file, or
both (``llm_args.py``).

Requests go through the engine's admission in the caller's thread, as the server's do on its
worker threads; a refused request raises ``ParamError`` (or ``GrammarError``) naming its field, and
nothing of a refused batch reaches the engine.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

from jaxserve.config import Config
from jaxserve.llm_args import resolve_config
from jaxserve.outputs import RequestOutput, merge_delta
from jaxserve.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: Config | str | Path | None = None, *,
                 config: Config | str | Path | None = None, progress: bool = True,
                 **kwargs: Any):
        from jaxserve.builder import build_engine

        config = resolve_config(model, config, kwargs)
        self.config = config
        self.engine, self.info = build_engine(config, progress=progress)
        self.tokenizer = self.engine.tokenizer
        self.admission = self.engine.admission
        self._ids = itertools.count()

    def encode_chat(self, messages: list[dict], **template_kwargs: Any) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True, **template_kwargs)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False).input_ids
        return list(prompt)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[RequestOutput]:
        """Deltas of one request as the engine produces them (the engine runs in this thread)."""
        admitted = self.admission.admit(prompt_ids, params)
        request_id = f"offline-{next(self._ids)}"
        self.engine.add_request(request_id, admitted)
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            self.engine.abort_request(request_id)

    def generate_ids(self, prompts: list[list[int]],
                     params: SamplingParams | list[SamplingParams] | None = None,
                     ) -> list[RequestOutput]:
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        admitted = [self.admission.admit(ids, p) for ids, p in zip(prompts, params_list)]
        ids = []
        for request in admitted:
            request_id = f"offline-{next(self._ids)}"
            self.engine.add_request(request_id, request)
            ids.append(request_id)
        totals: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for delta in self.engine.step():
                totals[delta.request_id] = merge_delta(totals.get(delta.request_id), delta)
        return [totals[i] for i in ids]

    def generate(self, prompts: str | list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        return self.generate_ids([self._encode(p) for p in prompts], params)

    def chat(self, messages: list[dict] | list[list[dict]],
             params: SamplingParams | list[SamplingParams] | None = None,
             **template_kwargs: Any) -> list[RequestOutput]:
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        return self.generate_ids([self.encode_chat(c, **template_kwargs) for c in conversations],
                                 params)
