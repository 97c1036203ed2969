"""The responses kept for ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``:
in memory, bounded in count (``server.responses_store_size``, the oldest evicted first) and in
age (``server.responses_store_ttl`` seconds), so a long-running server does not grow without end.

Each entry holds the response as sent and the conversation that led to it (the chat messages
of its input, instructions left out), so a follow-up can put that conversation, then the
response's output, before its own input. Used from the event loop only, so it needs no lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    response: Any  # the ResponsesResponse Struct
    messages: list[dict[str, Any]]  # the input as chat messages, before the output
    stored_at: float


class ResponseStore:
    def __init__(self, max_size: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_size = max_size
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, response_id: str, response: Any, messages: list[dict[str, Any]]) -> None:
        self._entries.pop(response_id, None)
        self._entries[response_id] = StoredResponse(response, messages, self._clock())
        self._expire()
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        return self._entries.get(response_id)

    def delete(self, response_id: str) -> bool:
        self._expire()
        return self._entries.pop(response_id, None) is not None

    def _expire(self) -> None:
        # entries are in storing order, so the expired ones are a prefix
        limit = self._clock() - self.ttl
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.stored_at > limit:
                break
            self._entries.popitem(last=False)
