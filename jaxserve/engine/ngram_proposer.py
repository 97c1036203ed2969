"""Prompt lookup: propose the tokens that followed the sequence's last n tokens where those n
tokens appeared before, in its prompt or its output (vLLM's ``ngram`` method; host side, no jax).

Each sequence keeps an index from every n-gram (n in [min_n, max_n]) to the end of its latest
occurrence that has a token after it. The index grows by one entry per n for each new token, so a
step's proposal costs a few dictionary lookups however long the prompt is; only the first
proposal of a sequence indexes its prompt, once.
"""

from __future__ import annotations


class NgramIndex:
    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        # n -> n-gram -> e: the latest occurrence is tokens[e - n:e], and tokens[e] follows it
        self.ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}
        self.next_end = 1  # ends before this are indexed

    def update(self, tokens: list[int]) -> None:
        """Index the n-grams of tokens that now have a next token (all ends < len(tokens))."""
        for end in range(self.next_end, len(tokens)):
            for n, ends in self.ends.items():
                if n <= end:
                    ends[tuple(tokens[end - n:end])] = end
        self.next_end = max(self.next_end, len(tokens))

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the longest suffix of tokens seen before; [] if none."""
        self.update(tokens)
        size = len(tokens)
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            end = self.ends[n].get(tuple(tokens[size - n:]))
            if end is not None:
                return continuation(tokens, end, k)
        return []


def continuation(tokens: list[int], end: int, k: int) -> list[int]:
    """k tokens from tokens[end], read on past the end as the repeat the match implies (a
    match ending at end repeats the text with period len(tokens) - end)."""
    out = tokens[end:end + k]
    period = len(tokens) - end
    while len(out) < k:
        out.append(out[len(out) - period])
    return out


def propose_reference(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """The same proposal by a plain scan (the index's test oracle): for the longest n whose
    suffix occurred earlier, the tokens after its latest earlier occurrence."""
    size = len(tokens)
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        suffix = tokens[size - n:]
        for end in range(size - 1, n - 1, -1):
            if tokens[end - n:end] == suffix:
                return continuation(tokens, end, k)
    return []
