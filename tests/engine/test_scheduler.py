"""The Scheduler alone, on hand-made sequences: its policy in cases small enough to work out by
hand (pages of 4 tokens, budgets of a few tokens). No engine, no runner, no jax.

Each step is checked as its rows, ``(request id, start, tokens computed, samples)``; after a step
the test does what the engine does with its tokens (``sampled``: every sample row gets one)."""

from __future__ import annotations

from itertools import count

import numpy as np

from jaxserve.config import SchedulerConfig
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.scheduler import Scheduler, SchedulerOutput
from jaxserve.engine.sequence import Request, Sequence, Status
from jaxserve.sampling_params import SamplingParams

PAGE = 4


def make_scheduler(*, num_pages: int = 32, max_num_seqs: int = 4, budget: int = 16,
                   token_buckets: tuple[int, ...] = (16,), seq_buckets: tuple[int, ...] = (4,),
                   max_model_len: int = 64, prefix_caching: bool = True) -> Scheduler:
    """One token rung by default, so the rung-below rule only acts where a test asks for it."""
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                             token_buckets=list(token_buckets), seq_buckets=list(seq_buckets),
                             num_decode_steps=1)
    return Scheduler(config, PageAllocator(num_pages, PAGE, prefix_caching), max_model_len)


_seq_ids = count()


def add(scheduler: Scheduler, name: str, prompt: list[int], max_tokens: int = 16) -> Sequence:
    """A one-sample request, queued as the engine's add_request does."""
    request = Request(name, list(prompt), SamplingParams(max_tokens=max_tokens, temperature=0),
                      max_tokens)
    seq = Sequence(seq_id=next(_seq_ids), request=request, index=0, token_ids=list(prompt),
                   num_prompt_tokens=len(prompt), rng_key=np.zeros(2, np.uint32))
    request.seqs.append(seq)
    scheduler.add(seq)
    return seq


def rows(out: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    return [(s.seq.request.request_id, s.start, s.num_new_tokens, s.sample) for s in out.scheduled]


def sampled(out: SchedulerOutput, token: int = 1) -> None:
    """The step ran: each sample row's sequence gets its next token."""
    for s in out.sample_rows:
        s.seq.token_ids.append(token)


def prompt(n: int, first: int = 10) -> list[int]:
    return list(range(first, first + n))


def test_decodes_go_first_then_prefill_chunks_in_arrival_order():
    sched = make_scheduler()
    a = add(sched, "a", prompt(6))
    first = sched.schedule()
    assert rows(first) == [("a", 0, 6, True)]
    sampled(first)
    add(sched, "b", prompt(20, 100))
    add(sched, "c", prompt(3, 200))
    # a's decode first; b takes the 15 tokens left; c, behind b, waits for budget
    second = sched.schedule()
    assert rows(second) == [("a", 6, 1, True), ("b", 0, 15, False)]
    assert [s.request.request_id for s in sched.waiting] == ["c"]
    sampled(second)
    # b's last 5 tokens are a prefill chunk, after a's decode; c fits behind them
    third = sched.schedule()
    assert rows(third) == [("a", 7, 1, True), ("b", 15, 5, True), ("c", 0, 3, True)]
    assert third.num_tokens == 9 and not sched.waiting
    assert a.num_computed_tokens == 8 and len(a.pages) == 2


def test_a_long_prompt_is_chunked_across_steps_within_the_token_budget():
    sched = make_scheduler()
    seq = add(sched, "long", prompt(40))
    chunks = []
    for _ in range(3):
        out = sched.schedule()
        chunks += rows(out)
        # pages grow with the chunks: only what the computed tokens need
        assert len(seq.pages) == -(-seq.num_computed_tokens // PAGE)
        sampled(out)
    assert chunks == [("long", 0, 16, False), ("long", 16, 16, False), ("long", 32, 8, True)]
    assert seq.num_tokens == 41 and seq.num_uncomputed_tokens == 1  # next: its first decode
    assert rows(sched.schedule()) == [("long", 40, 1, True)]


def test_the_sequence_budget_keeps_the_rest_waiting_until_one_finishes():
    sched = make_scheduler(max_num_seqs=2)
    a, b, c = (add(sched, name, prompt(2, 10 * i)) for i, name in enumerate("abc", 1))
    out = sched.schedule()
    assert rows(out) == [("a", 0, 2, True), ("b", 0, 2, True)]  # budget left, but no seat
    assert list(sched.waiting) == [c] and c.status is Status.WAITING
    sampled(out)
    out = sched.schedule()
    assert rows(out) == [("a", 2, 1, True), ("b", 2, 1, True)]
    sampled(out)
    sched.finish(a)
    assert a.status is Status.FINISHED and not a.pages
    assert rows(sched.schedule()) == [("b", 3, 1, True), ("c", 0, 2, True)]
    assert sched.running == [b, c]


def test_out_of_pages_preempts_the_latest_sequence_which_recomputes_later():
    # 4 pages of 4 tokens: a (8 tokens) and b (7) fill them all
    sched = make_scheduler(num_pages=4, prefix_caching=False)
    a = add(sched, "a", prompt(8))
    b = add(sched, "b", prompt(7, 100))
    out = sched.schedule()
    assert rows(out) == [("a", 0, 8, True), ("b", 0, 7, True)]
    assert sched.allocator.num_free_pages == 0
    sampled(out)
    # a's 9th token needs a third page: b, the latest admitted, gives its two back
    out = sched.schedule()
    assert rows(out) == [("a", 8, 1, True)] and out.preempted == [b]
    assert sched.num_preemptions == 1 and b.num_preemptions == 1
    assert b.status is Status.WAITING and list(sched.waiting) == [b]
    assert not b.pages and b.num_computed_tokens == 0 and len(a.pages) == 3
    assert sched.allocator.num_free_pages == 1
    sampled(out)
    # one page free, b needs two: it waits (a keeps decoding into its third page)
    assert rows(sched.schedule()) == [("a", 9, 1, True)]
    sched.finish(a)
    # b recomputes its prompt and the token it had sampled, and samples the next one
    assert b.num_tokens == 8
    assert rows(sched.schedule()) == [("b", 0, 8, True)]
    assert b.num_preemptions == 1 and b.num_cached_tokens == 0


def test_the_sequence_short_of_a_page_preempts_itself_when_it_is_the_latest():
    sched = make_scheduler(num_pages=4, prefix_caching=False)
    a = add(sched, "a", prompt(7))  # 2 pages, room for its 8th token
    b = add(sched, "b", prompt(8, 100))  # 2 full pages
    sampled(sched.schedule())
    out = sched.schedule()
    # a decodes into its own page; b's 9th token needs a page, and nobody after b can give one
    assert rows(out) == [("a", 7, 1, True)] and out.preempted == [b]
    assert sched.running == [a] and list(sched.waiting) == [b]


def test_a_step_that_preempted_admits_nobody():
    sched = make_scheduler(num_pages=5, prefix_caching=False)
    add(sched, "a", prompt(8))
    b = add(sched, "b", prompt(8, 100))
    sampled(sched.schedule())  # 4 pages held, 1 free
    add(sched, "c", prompt(2, 200))  # would fit in the free page
    out = sched.schedule()  # a takes the free page; b needs one more and preempts itself
    assert rows(out) == [("a", 8, 1, True)] and out.preempted == [b]
    assert [s.request.request_id for s in sched.waiting] == ["b", "c"]


def test_admission_takes_the_cached_prefix_and_computes_only_the_rest():
    sched = make_scheduler()
    shared = prompt(12)  # three full pages
    a = add(sched, "a", shared + [7])
    sampled(sched.schedule())
    a_pages = list(a.pages)
    sched.finish(a)  # its pages are free but keep their K/V and keys
    assert sched.allocator.num_free_pages == 32
    b = add(sched, "b", shared + [8, 9])
    out = sched.schedule()
    assert rows(out) == [("b", 12, 2, True)]
    assert b.pages[:3] == a_pages[:3] and b.num_cached_tokens == 12
    assert sched.allocator.num_cache_hits == 3
    sampled(out)
    # the same prompt again: its last token is computed all the same, for its logits
    c = add(sched, "c", shared + [7])
    assert rows(sched.schedule()) == [("b", 14, 1, True), ("c", 12, 1, True)]
    assert c.pages[:3] == a_pages[:3] and sched.allocator.ref_counts[a_pages[0]] == 2


def test_without_prefix_caching_admission_computes_everything():
    sched = make_scheduler(prefix_caching=False)
    a = add(sched, "a", prompt(12) + [7])
    sampled(sched.schedule())
    sched.finish(a)
    b = add(sched, "b", prompt(12) + [8])
    assert rows(sched.schedule()) == [("b", 0, 13, True)]
    assert b.num_cached_tokens == 0 and sched.allocator.num_cache_hits == 0


RUNGS = {"budget": 32, "token_buckets": (8, 16, 32)}


def test_a_step_just_past_a_rung_takes_the_rung_and_the_last_chunk_waits():
    sched = make_scheduler(**RUNGS)
    add(sched, "a", prompt(3))
    sampled(sched.schedule())
    add(sched, "b", prompt(16, 100))
    # a's decode and b's 16 tokens make 17, an eighth past the rung of 16: b gives up one token
    out = sched.schedule()
    assert rows(out) == [("a", 3, 1, True), ("b", 0, 15, False)]
    sampled(out)
    out = sched.schedule()
    assert rows(out) == [("a", 4, 1, True), ("b", 15, 1, True)]
    sampled(out)
    # 2 decodes and 12 tokens make 14, well past the rung of 8: the budget stands
    add(sched, "c", prompt(12, 200))
    assert rows(sched.schedule()) == [("a", 5, 1, True), ("b", 16, 1, True), ("c", 0, 12, True)]


def test_the_rung_below_counts_a_waiting_prompt_by_its_uncached_tokens():
    sched = make_scheduler(**RUNGS)
    shared = prompt(20)  # five full pages
    p = add(sched, "p", shared + [1])
    sampled(sched.schedule())
    sched.finish(p)
    add(sched, "a", prompt(3, 100))
    sampled(sched.schedule())
    add(sched, "q", shared + prompt(16, 200))  # 36 tokens, 20 of them cached
    # a's decode + q's 16 uncached tokens would be 17: 16 it is
    assert rows(sched.schedule()) == [("a", 3, 1, True), ("q", 20, 15, False)]


def test_a_decode_or_a_last_token_is_never_held_back():
    sched = make_scheduler(**RUNGS, max_num_seqs=17, seq_buckets=(32,))
    for i in range(16):
        add(sched, f"r{i}", [40 + i])
    sampled(sched.schedule())
    add(sched, "z", [9])
    # 16 decodes and z's single token make 17: padded up to 32 rather than delayed
    out = sched.schedule()
    assert out.num_tokens == 17 and rows(out)[-1] == ("z", 0, 1, True)


def test_a_look_ahead_step_never_preempts():
    sched = make_scheduler(num_pages=4, prefix_caching=False)
    a = add(sched, "a", prompt(8))
    b = add(sched, "b", prompt(7, 100))
    out = sched.schedule()
    for s in out.sample_rows:  # launched: the tokens are on the device, not yet on the host
        s.seq.num_pending += 1
    # a's pending token needs a third page: a look-ahead step leaves a out, preempting nobody
    ahead = sched.schedule(look_ahead=True)
    assert rows(ahead) == [("b", 7, 1, True)]
    assert not ahead.preempted and sched.num_preemptions == 0
    assert sched.running == [a, b] and len(a.pages) == 2


def test_a_look_ahead_step_skips_a_sequence_its_last_token_finishes():
    sched = make_scheduler()
    add(sched, "one", prompt(3), max_tokens=1)
    add(sched, "more", prompt(3, 100), max_tokens=5)
    out = sched.schedule()
    for s in out.sample_rows:
        s.seq.num_pending += 1
    assert [r[0] for r in rows(sched.schedule(look_ahead=True))] == ["more"]


def make_speculating(**kw) -> Scheduler:
    from jaxserve.config import SpeculativeConfig
    from jaxserve.engine.speculation import Speculator

    scheduler = make_scheduler(**kw)
    spec = SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_min=2, prompt_lookup_max=2)
    scheduler.speculator = Speculator(spec, 64, scheduler.config.seq_buckets[-1])
    return scheduler


def test_a_decode_that_drafts_takes_pages_for_its_drafts_and_rolls_them_back():
    scheduler = make_speculating(seq_buckets=(8,), max_num_seqs=8)
    a = add(scheduler, "a", [1, 2, 1, 2, 1, 2])
    sampled(scheduler.schedule())  # the prompt, then its sample: 1 2 1 2 1 2 1
    out = scheduler.schedule()
    # (2, 1) last came before 2 1: the drafts read on as the repeat, 2 1 2
    assert rows(out) == [("a", 6, 4, True)] and out.scheduled[0].draft_tokens == [2, 1, 2]
    assert out.sample_row_starts == [0, 4]
    # K/V for positions 0..9 (6 known, the 7th token's own, 3 drafts): 3 pages of 4
    assert a.num_computed_tokens == 10 and len(a.pages) == 3
    # every draft rejected: the sample at position 7 is the one new token
    a.token_ids.append(9)
    scheduler.roll_back(a, 6 + 1)
    assert (a.num_computed_tokens, a.num_uncomputed_tokens, len(a.pages)) == (7, 1, 2)
    assert scheduler.allocator.num_free_pages == 30  # the page only drafts filled is back


def test_drafts_are_cut_to_the_sample_rows_a_step_has():
    scheduler = make_speculating(seq_buckets=(4,), max_num_seqs=4)
    a = add(scheduler, "a", [5, 6, 5, 6, 5, 6])
    sampled(scheduler.schedule(), token=5)
    add(scheduler, "b", [7, 8, 7, 8])
    add(scheduler, "c", [4, 4])
    out = scheduler.schedule()
    # a drafts 6 5 6 before b and c join; their two sample rows leave a room for one draft
    assert rows(out) == [("a", 6, 2, True), ("b", 0, 4, True), ("c", 0, 2, True)]
    assert out.scheduled[0].draft_tokens == [6]
    assert out.sample_row_starts == [0, 2, 3, 4]
    assert a.num_computed_tokens == 8 and len(a.pages) == 2
    assert scheduler.allocator.num_free_pages == 32 - 2 - 1 - 1
