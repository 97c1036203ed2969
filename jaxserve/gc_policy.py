"""Python's cyclic garbage collector while an engine starts, and after.

A start allocates ~250k container objects that live as long as the process: jax's and transformers'
modules, the tokenizer's vocabulary, traced programs. Python collects whenever allocations
outrun deallocations by a threshold, and every full collection walks all of them again: with the
collector on, a warm server start spent ~0.7 s of its ~3.4 s collecting (measured with
``gc.disable()`` around the build: imports 0.85-1.34 -> 0.68-0.72 s, engine built 3.4-5.1 ->
2.8-3.3 s). So no collection runs during a start; at its end one collection frees what the start
left in cycles, and ``gc.freeze()`` moves the survivors to a generation no later collection
walks: a full collection while serving then looks at the request objects only, not at the whole
heap (measured after a SmolLM2 build: 189 ms for a full collection, against none with the
start frozen). Younger collections still run as before, so cycles among request objects are
freed as promptly as ever.

The modules a build imports (jax, flax, the engine's own) are ~200k of the ~260k objects that
final collection would walk, for 0.23 s of a start; they live as long as the process, so they are
frozen as soon as they are imported (``freeze_imports``) and the collection at the end walks the
build's own objects only: 0.055-0.071 s (three builds). The price is the few thousand cyclic
leftovers of those imports (~4.5k objects, measured), frozen instead of freed.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection inside; on success, collect once and freeze what survives.

    The collector's on/off state is restored on leaving, so a caller that paused it earlier
    (``jaxserve run`` pauses it before its imports) keeps it paused.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.collect()
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


def freeze_imports() -> None:
    """Freeze what exists now (inside ``collector_paused``, once the heavy imports are done), so
    no later collection walks it."""
    gc.freeze()
