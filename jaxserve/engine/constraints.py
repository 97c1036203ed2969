"""The engine's view of constrained decoding (host side, no jax).

A ``Constraint`` follows one sequence through a grammar: before each step it writes the tokens it
allows into that sequence's row of a packed bitmask (bit ``t % 32`` of word ``t // 32``), which the
jitted sampler applies on the device; after the step it consumes the sampled token. The engine
only needs this protocol; ``jaxserve.structured`` builds constraints with llguidance.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from jaxserve.sampling_params import SamplingParams


class Constraint(Protocol):
    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the allowed next tokens into bitmask[row] (i32[S, ceil(V / 32)])."""

    def accept_token(self, token_id: int) -> None:
        """Advance past a sampled token."""

    def is_terminated(self) -> bool:
        """The grammar is complete: nothing more may follow."""


# SamplingParams -> a fresh constraint for one sequence, or None when it has no constraint;
# raises ValueError (a 400) for a schema or grammar that does not compile
ConstraintFactory = Callable[[SamplingParams], "Constraint | None"]


def bitmask_words(vocab_size: int) -> int:
    return -(-vocab_size // 32)
