"""Python's cyclic garbage collector while an engine starts, and after.

A start allocates hundreds of thousands of container objects that live as long as the process
(jax's and transformers' modules, the tokenizer's vocabulary, traced programs), and every full
collection walks all of them again. So no collection runs during a start; at its end one
collection frees what the start left in cycles, and ``gc.freeze()`` moves the survivors to a
generation no later collection walks, so a full collection while serving looks at request
objects only. Younger collections still run as before, so cycles among request objects are freed
as promptly as ever.

That is the server's rule (``jaxserve run``); an offline ``LLM`` collects at the end of its build
but freezes nothing, so dropping it frees it. The modules a build imports are most of those objects and live as long as the process, so they
are frozen as soon as they are imported (``freeze_imports``) and the collection at the end walks
the build's own objects only; the price is the few cyclic leftovers of those imports, frozen
instead of freed. docs/notes/design-measurements.md gives the figures.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_freezing = False  # inside a collector_paused(freeze=True)


@contextmanager
def collector_paused(freeze: bool = True) -> Iterator[None]:
    """No automatic collection inside; on success, collect once and, with ``freeze``, freeze
    what survives.

    Only a process that builds one engine for its lifetime (``jaxserve run``) should freeze: a
    frozen object is never collected, so a notebook's dropped ``LLM`` would keep its weights and
    K/V cache for good. The collector's on/off state is restored on leaving, so a caller that
    paused it earlier (``jaxserve run`` pauses it before its imports) keeps it paused.
    """
    global _freezing
    was_enabled, was_freezing = gc.isenabled(), _freezing
    gc.disable()
    _freezing = freeze
    try:
        yield
        gc.collect()
        if freeze:
            gc.freeze()
    finally:
        _freezing = was_freezing
        if was_enabled:
            gc.enable()


def freeze_imports() -> None:
    """Freeze what exists now (inside ``collector_paused(freeze=True)``, once the heavy imports
    are done), so no later collection walks it; elsewhere a no-op, since it would freeze any
    dropped engine still waiting to be collected too."""
    if _freezing:
        gc.freeze()
