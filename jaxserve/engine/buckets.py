"""Static shape buckets: each step is padded up to a (tokens, sequences) pair built from two
short ladders, so the jitted step compiles once per pair (host side, no jax).

A step with ``n`` tokens and ``r`` sequence rows gets the smallest token rung that holds both
(a row needs at least its token), and the smallest sequence rung that holds ``r``, capped at the
token rung: a rung of 1 token therefore makes a (1, 1) bucket for a lone decode, whose
matrix-vector products cost much less than those of the next bucket up (see
docs/performance.md), without adding a sequence rung of 1 to every other token rung.
"""

from __future__ import annotations

import bisect


def pick_bucket(ladder: list[int], n: int) -> int:
    """The smallest rung >= n (JetStream's take_nearest_length)."""
    i = bisect.bisect_left(ladder, n)
    if i == len(ladder):
        raise ValueError(f"{n} exceeds the largest bucket {ladder[-1]}")
    return ladder[i]


def pick_pair(token_ladder: list[int], seq_ladder: list[int], num_tokens: int, num_rows: int,
              ) -> tuple[int, int]:
    """The (T, S) bucket of a step with num_tokens tokens and num_rows sequence rows."""
    t = pick_bucket(token_ladder, max(num_tokens, min(num_rows, token_ladder[-1])))
    s = pick_bucket(seq_ladder, num_rows)
    if num_rows <= t < s:
        s = t
    return t, s


SNAP_FRACTION = 8  # a step may fall back to the rung below by at most an eighth of that rung


def snap_down(ladder: list[int], n: int) -> int:
    """The tokens a step that wants n should take: n, or the rung just below n when n passes it
    by at most an eighth of it. Those few tokens then wait a step, where padding n up to the
    next rung would compute a whole gap of nothing (387 tokens run as 512, 270 as 384)."""
    i = bisect.bisect_left(ladder, n)
    if i == 0 or (i < len(ladder) and ladder[i] == n):
        return n
    below = ladder[i - 1]
    return below if n - below <= below // SNAP_FRACTION else n


def decode_buckets(token_ladder: list[int], seq_ladder: list[int], max_num_seqs: int,
                   ) -> list[tuple[int, int]]:
    """The buckets a decode-only batch (one token per sequence) can land in."""
    largest = min(max_num_seqs, token_ladder[-1])  # a step never holds more tokens than that
    return sorted({pick_pair(token_ladder, seq_ladder, n, n) for n in range(1, largest + 1)})


def all_buckets(token_ladder: list[int], seq_ladder: list[int]) -> list[tuple[int, int]]:
    """Every (num_tokens, num_seqs) pair a step can be padded to."""
    pairs = set()
    for t in token_ladder:  # a rung's largest token count stands for all counts down to the last
        for s in seq_ladder:
            for rows in {1, s, min(s, t)}:
                pairs.add(pick_pair(token_ladder, seq_ladder, t, rows))
    return sorted(pairs)


def prompt_logprob_buckets(token_ladder: list[int], seq_ladder: list[int]
                           ) -> list[tuple[int, int]]:
    """The buckets that also get a prompt-logprob program (runner/prompt_logprobs.py): the
    largest only, so warm-up compiles one more program; a step that carries prompt logprobs is
    padded to it (it computes only its real positions' logprobs, block by block)."""
    return [pick_pair(token_ladder, seq_ladder, token_ladder[-1], seq_ladder[-1])]
