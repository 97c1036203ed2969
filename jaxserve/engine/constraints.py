"""The engine's view of constrained decoding (host side, no jax).

A ``Constraint`` follows one sequence through a grammar: before each step it writes the tokens it
allows into that sequence's row of a packed bitmask (bit ``t % 32`` of word ``t // 32``), which the
jitted sampler applies on the device; after the step it consumes the sampled token. The engine
only needs this protocol; ``jaxserve.structured`` builds constraints with llguidance.

A ``ConstraintFactory`` is used by admission (``admission.py``), on the caller's thread: it compiles
a request's grammar once and hands out one fresh constraint per sample, which travel with the
admitted request, so the engine thread never compiles.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from jaxserve.sampling_params import StructuredOutputs


class Constraint(Protocol):
    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the allowed next tokens into bitmask[row] (i32[S, ceil(V / 32)])."""

    def accept_token(self, token_id: int) -> None:
        """Advance past a sampled token."""

    def is_terminated(self) -> bool:
        """The grammar is complete: nothing more may follow."""


class ConstraintFactory(Protocol):
    def compile(self, so: StructuredOutputs) -> object:
        """The compiled grammar (cached); raises ValueError naming the part at fault. Slow:
        never on the event loop, never on the engine thread."""

    def constraints(self, so: StructuredOutputs, n: int) -> list[Constraint]:
        """n fresh constraints on one compiled grammar, compiling it first when needed."""


def bitmask_words(vocab_size: int) -> int:
    return -(-vocab_size // 32)
