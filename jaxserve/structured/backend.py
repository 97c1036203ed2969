"""llguidance behind the engine's ``ConstraintFactory`` (host side, no jax).

    SamplingParams.structured_outputs -> grammar text -> compiled LLMatcher (cached) -> a copy per
    sequence -> each step: fill its bitmask row, consume the sampled token

Compiling is the slow part (the tokenizer trie is built once per model; a grammar takes
milliseconds to hundreds of milliseconds); a compiled matcher is kept in an LRU cache keyed by the
grammar text, and each sequence gets a ``deep_copy`` of it (microseconds). Both happen at
admission (``engine/admission.py``), on the caller's worker thread: the constraints travel with
the admitted request, so the engine thread neither compiles nor copies nor reads the cache; it
only fills masks and consumes tokens.

The model's vocabulary may be larger than the tokenizer's (padded embeddings): llguidance is told
the model's size, so its mask rows are as wide as the engine's, and the padding ids, which no text
decodes to, are never allowed. EOS is allowed exactly when the grammar accepts.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict

import numpy as np
from llguidance import LLMatcher, LLTokenizer
from llguidance.numpy import fill_next_token_bitmask

from jaxserve.sampling_params import StructuredOutputs
from jaxserve.structured.grammars import GrammarError, constraint_field, grammar_text

log = logging.getLogger("jaxserve.structured")

CACHE_SIZE = 256  # compiled grammars kept; a schema is a few KiB to a few MiB compiled


class GrammarConstraint:
    """One sequence's walk through a compiled grammar (the engine's ``Constraint``)."""

    def __init__(self, matcher: LLMatcher, eos_token_ids: tuple[int, ...], num_real_tokens: int):
        self.matcher = matcher
        self.eos_token_ids = eos_token_ids
        self.num_real_tokens = num_real_tokens  # ids at and past this are padding

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:  # bitmask: i32[S, W]
        bits = bitmask[row].view(np.uint32)  # u32[W], shares memory with the row
        if self.matcher.is_error():  # cannot happen while the mask is obeyed; end the sequence
            bits[:] = 0
            for token_id in self.eos_token_ids:
                bits[token_id // 32] |= np.uint32(1 << (token_id % 32))
            return
        fill_next_token_bitmask(self.matcher, bitmask, row)
        first = self.num_real_tokens
        if first < 32 * bits.shape[0]:  # padding ids: llguidance never allows them; be sure
            bits[first // 32] &= np.uint32((1 << (first % 32)) - 1)
            bits[first // 32 + 1:] = 0

    def accept_token(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            log.warning("grammar rejected token %d: %s", token_id, self.matcher.get_error())

    def is_terminated(self) -> bool:
        return self.matcher.is_stopped()


class GrammarBackend:
    """The ``ConstraintFactory`` of an engine: ``constraints(so, n)`` gives n fresh ones."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: tuple[int, ...],
                 cache_size: int = CACHE_SIZE):
        self.hf_tokenizer = tokenizer
        self.vocab_size = vocab_size  # the model's, padding included
        self.eos_token_ids = tuple(eos_token_ids)
        self.num_real_tokens = min(len(tokenizer), vocab_size)
        self.cache_size = cache_size
        self._ll_tokenizer: LLTokenizer | None = None
        self._cache: OrderedDict[str, LLMatcher] = OrderedDict()
        self._lock = threading.Lock()  # several worker threads admit requests at once
        self.compilations = 0  # grammars compiled so far (cache misses)

    @property
    def ll_tokenizer(self) -> LLTokenizer:
        with self._lock:  # built on first use: it is slow to build and many servers never need it
            if self._ll_tokenizer is None:
                from llguidance.hf import from_tokenizer

                self._ll_tokenizer = from_tokenizer(self.hf_tokenizer, n_vocab=self.vocab_size,
                                                    eos_token=list(self.eos_token_ids))
            return self._ll_tokenizer

    def compile(self, so: StructuredOutputs) -> LLMatcher:
        """The compiled grammar of a constraint, from the cache when it was seen before; raises
        GrammarError naming the faulty part. Safe to call from any thread."""
        grammar = grammar_text(so)
        with self._lock:
            matcher = self._cache.get(grammar)
            if matcher is not None:
                self._cache.move_to_end(grammar)
                return matcher
        # outside the lock: a slow compilation must not hold up other requests' cache hits
        try:
            matcher = LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        except (ValueError, RecursionError) as exc:  # the input's fault: a 400, not a 500
            raise GrammarError(_error_message(str(exc)), constraint_field(so)) from None
        if matcher.is_error():
            raise GrammarError(_error_message(matcher.get_error()), constraint_field(so))
        with self._lock:
            self.compilations += 1
            self._cache[grammar] = matcher
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return matcher

    def constraints(self, so: StructuredOutputs, n: int) -> list[GrammarConstraint]:
        """n fresh constraints on the compiled grammar; the cached matcher itself never moves."""
        matcher = self.compile(so)
        return [GrammarConstraint(matcher.deep_copy(), self.eos_token_ids, self.num_real_tokens)
                for _ in range(n)]


def _error_message(error: str) -> str:
    """llguidance errors can carry the grammar listing and parser state after the message; keep
    the message, on one line."""
    kept = []
    for line in error.strip().splitlines():
        if re.match(r"\s*\d+ \|", line) or line.startswith("<state>"):
            break
        if line.strip():
            kept.append(line.strip())
    return " ".join(kept)[:500] or "invalid grammar"
