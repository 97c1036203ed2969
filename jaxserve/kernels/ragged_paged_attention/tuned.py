"""The CPU backend's tuned constants (``cpu_attention.py``, ``cpu_prefill.py``), as data.

Values for XLA:CPU; ``scripts/bench_attention_ab.py`` measures a change to any of them on the
model's full engine step. Code reads them as ``tuned.NAME`` at trace time, so a test may
monkeypatch one (and clear the jit cache).
"""

# rows (sequences or query blocks) that walk the pages together: a bucket's padding rows past
# the last real row skip their walk, and each walk stops at its own furthest key
ROWS_PER_WALK = 8

# pages per walk iteration (128 keys with 16-token pages): wide products per iteration, few
# padding keys read past a short sequence's end
PAGES_PER_ITER = 8

# pages per walk iteration of a one-token step (the lone-decode bucket): fewer loop iterations;
# steps with more rows walk no faster this wide, so they keep PAGES_PER_ITER
LONE_DECODE_PAGES_PER_ITER = 16

# token rows per dense product of a prefill chunk (a causal block, a window over earlier keys):
# each causal block takes only the keys up to its last row, yet the dots stay large
ROW_BLOCK = 128

# tokens: steps this small keep the decode walk inside each lax.cond branch, which XLA:CPU runs
# faster; larger steps hold it once outside the cond, since a program's size is what its
# executable costs in memory and in load time
WALK_IN_BRANCHES_UP_TO = 4

# steps of up to this many tokens attend to their own keys with a dense [T, T] product; past it
# that O(T^2) product costs more than walking every key through the pages
MAX_DENSE_TOKENS = 512

# queries per page walk in a step longer than MAX_DENSE_TOKENS that holds a prefill chunk
BLOCK_Q = 16

# earlier keys a prefill chunk gathers at once: one gather feeds all of the chunk's rows
KEY_BLOCK = 256
