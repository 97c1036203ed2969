"""Requests to prompt token ids: chat templates, plain text, token ids.

Tokenizing (and rendering a Jinja chat template) is CPU work that a long prompt makes slow, so it
runs on one dedicated thread, never on the event loop that streams everyone's tokens and never on
the engine thread. One thread, because a Hugging Face fast tokenizer may refuse concurrent use
("Already borrowed").
"""

from __future__ import annotations

import asyncio
import inspect
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import jinja2
import msgspec

from jaxserve.entrypoints.chat_protocol import ROLES, ChatMessage
from jaxserve.entrypoints.errors import bad_request


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Chat messages as the dicts a chat template expects; text parts are joined with newlines
    (vLLM's rule), any other part is refused."""
    if not messages:
        raise bad_request("messages must contain at least one message", param="messages")
    out = []
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            raise bad_request(f"messages[{i}].role: unknown role {message.role!r}; expected one "
                              f"of {', '.join(ROLES)}", param=f"messages[{i}].role")
        content = message.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise bad_request(f"messages[{i}].content[{j}]: only text parts are supported, "
                                      f"got type {part.type!r}", param=f"messages[{i}].content")
                texts.append(part.text)
            content = "\n".join(texts)
        entry: dict[str, Any] = {"role": message.role, "content": content or ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            value = getattr(message, key)
            if value is not None:
                entry[key] = msgspec.to_builtins(value)  # templates index dicts
        out.append(entry)
    return out


def completion_prompts(prompt: str | list, vocab_size: int) -> list[str | list[int]]:
    """A completions ``prompt`` as a list of prompts, each text or token ids (checked against
    the vocabulary here, since echo decodes them before the engine sees them)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif all(isinstance(p, list) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise bad_request("prompt must be a string, a list of strings, a list of token ids or "
                          "a list of token-id lists", param="prompt")
    if any(not 0 <= t < vocab_size for p in prompts for t in p):
        raise bad_request(f"prompt token ids must be in [0, {vocab_size})", param="prompt")
    return prompts


class Prompts:
    """Tokenizer work on its own thread."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._template_parameters = set(
            inspect.signature(tokenizer.apply_chat_template).parameters) - {"kwargs"}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="jaxserve-tokenizer")

    async def _run(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return await self._run(self._encode, text, add_special_tokens)

    async def bad_words_ids(self, words: list[str]) -> list[list[int]]:
        """vLLM's tokenizing of bad_words: each word as it is, and after a space when that is
        other tokens of the same count (a word inside text, not at its start)."""
        return await self._run(self._bad_words_ids, words)

    async def decode(self, token_ids: list[int]) -> str:
        return await self._run(self.tokenizer.decode, token_ids)

    async def encode_chat(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool,
                          continue_final_message: bool, tools: list[dict] | None = None,
                          template_kwargs: dict[str, Any] | None = None,
                          add_special_tokens: bool = False, chat_template: str | None = None,
                          documents: list[dict[str, str]] | None = None) -> list[int]:
        """chat_template: the request's own (the caller checked it may be used), else the
        tokenizer's."""
        if add_generation_prompt and continue_final_message:
            raise bad_request("add_generation_prompt and continue_final_message cannot both be "
                              "true", param="continue_final_message")
        if continue_final_message and messages[-1]["role"] != "assistant":
            raise bad_request("continue_final_message needs the last message to be the "
                              "assistant's", param="continue_final_message")
        return await self._run(self._encode_chat, messages, add_generation_prompt,
                               continue_final_message, tools, template_kwargs or {},
                               add_special_tokens, chat_template, documents)

    # ---- on the tokenizer thread -------------------------------------------------------------
    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids

    def _bad_words_ids(self, words: list[str]) -> list[list[int]]:
        out = []
        for i, word in enumerate(words):
            plain = self._encode(word.lstrip(), False)
            if not plain:
                raise bad_request(f"bad_words[{i}] must not be empty", param="bad_words")
            out.append(plain)
            spaced = self._encode(" " + word.lstrip(), False)
            if spaced[0] != plain[0] and len(spaced) == len(plain):
                out.append(spaced)
        return out

    def _encode_chat(self, messages, add_generation_prompt, continue_final_message, tools,
                     template_kwargs, add_special_tokens, chat_template, documents) -> list[int]:
        # chat_template_kwargs are template variables only: none may change what
        # apply_chat_template returns or which template it renders
        kwargs = {k: v for k, v in template_kwargs.items() if k not in self._template_parameters}
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, tools=tools,
                chat_template=chat_template, documents=documents, **kwargs)
        except (jinja2.TemplateError, ValueError, TypeError, KeyError) as exc:
            # a template that cannot render these messages is the request's problem, not ours
            raise bad_request(f"the chat template could not render the messages: {exc}",
                              param="chat_template" if chat_template else "messages") from None
        return self._encode(text, add_special_tokens)
