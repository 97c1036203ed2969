"""Static shape buckets: each step is padded up to the nearest rung of a short ladder, so the
jitted step compiles once per (token bucket, sequence bucket) pair (host side, no jax)."""

from __future__ import annotations

import bisect


def pick_bucket(ladder: list[int], n: int) -> int:
    """The smallest rung >= n (JetStream's take_nearest_length)."""
    i = bisect.bisect_left(ladder, n)
    if i == len(ladder):
        raise ValueError(f"{n} exceeds the largest bucket {ladder[-1]}")
    return ladder[i]


def decode_buckets(token_ladder: list[int], seq_ladder: list[int], max_num_seqs: int,
                   ) -> list[tuple[int, int]]:
    """The buckets a decode-only batch (one token per sequence) can land in."""
    pairs = {(pick_bucket(token_ladder, n), pick_bucket(seq_ladder, n))
             for n in range(1, max_num_seqs + 1)}
    return sorted(pairs)


def all_buckets(token_ladder: list[int], seq_ladder: list[int]) -> list[tuple[int, int]]:
    """Every (num_tokens, num_seqs) pair a step can be padded to."""
    return [(t, s) for t in token_ladder for s in seq_ladder]
