"""Prompts for the tiny byte-level model: a batch of short ones and one long enough to chunk."""

from __future__ import annotations

LONG = "the quick brown fox jumps over the lazy dog; " * 4  # ~180 byte tokens: 3+ prefill chunks


def prompts(n: int) -> list[str]:
    return [f"prompt {i}: " + "abc " * (i * 3 + 1) for i in range(n)]
