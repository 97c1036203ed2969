"""Step programs kept on disk as exported StableHLO, so a warm start does not trace the model.

Lowering a bucket's programs means tracing the model in Python, holding the GIL, at every start.
``jax.export`` serializes a lowered program; on a later start ``jax.jit(exported.call)`` lowers it,
without tracing, into the module XLA was given before, and XLA's persistent cache then finds the
executable as it did without this.

A program is stored under a key of everything its trace depends on: the source of the
``jaxserve`` package (its kernels included), the versions of jax, jaxlib and flax, the caller's context
(model config, runner settings, attention functions, platform), the program's name, and its
argument tree with each leaf's shape and dtype. A program is exported flat (a list of leaves in,
built-in containers out), so no custom pytree needs serializing; the caller's arguments are
flattened at each call. A file that fails to load is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import jax
from jax import export

from jaxserve.kernels.ragged_paged_attention.export_check import TRITON_CUSTOM_CALL

log = logging.getLogger("jaxserve.program_cache")
# the key pins jax's version, so the cross-version stability export would guard is not needed
_ALLOWED = [export.DisabledSafetyCheck.custom_call(TRITON_CUSTOM_CALL)]


@functools.cache
def _source_fingerprint() -> str:
    import flax
    import jaxlib

    import jaxserve

    digest = hashlib.sha256()
    root = Path(jaxserve.__file__).parent
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    flags = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
             "jax_threefry_partitionable")  # the settings that change what a trace emits
    for part in (jax.__version__, jaxlib.__version__, flax.__version__, jax.default_backend(),
                 *(f"{flag}={getattr(jax.config, flag, None)}" for flag in flags)):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def describe_function(fn) -> str:
    """A stable name for a function (module, qualified name, partial arguments): no addresses."""
    if isinstance(fn, functools.partial):
        keywords = ", ".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"partial({describe_function(fn.func)}, {fn.args!r}, {keywords})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _leaf_type(leaf) -> str:
    return f"{tuple(leaf.shape)}:{leaf.dtype}:{bool(getattr(leaf, 'weak_type', False))}"


class FlatCall:
    """A compiled flat program, called with the original (pytree) arguments."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args):
        return self.compiled(*jax.tree.leaves(args))


class _FlatLowered:
    def __init__(self, lowered):
        self.lowered = lowered
        self.out_info = lowered.out_info

    def compile(self) -> FlatCall:
        return FlatCall(self.lowered.compile())


class ProgramCache:
    def __init__(self, directory: Path | None, context: str):
        """directory None: lower every program from its trace (nothing stored)."""
        self.directory = directory
        self.context = context
        self.hits = self.misses = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def key(self, name: str, args: tuple) -> str:
        leaves, tree = jax.tree.flatten(args)
        return self._key(name, leaves, tree)

    def _key(self, name: str, leaves: list, tree) -> str:
        digest = hashlib.sha256()
        for part in (_source_fingerprint(), self.context, name, str(tree)):
            digest.update(part.encode() + b"\0")
        digest.update(";".join(_leaf_type(leaf) for leaf in leaves).encode())
        return digest.hexdigest()[:40]

    def lower(self, name: str, fn, args: tuple, donate_argnums: tuple[int, ...] = ()):
        """``fn.lower(*args)`` (fn: a ``jax.jit`` function, args: arrays or ShapeDtypeStructs),
        or the same program from its exported file. Returns something with ``out_info`` and
        ``compile()``, whose result is called like ``fn``."""
        if self.directory is None:
            return fn.lower(*args)
        leaves, tree = jax.tree.flatten(args)
        path = self.directory / f"{name}-{self._key(name, leaves, tree)}.exported"
        exported = self._load(path)
        if exported is None:
            self.misses += 1
            flat = jax.jit(lambda *flat_args: fn(*jax.tree.unflatten(tree, flat_args)))
            try:
                exported = export.export(flat, disabled_checks=_ALLOWED)(*leaves)
            except Exception as e:  # noqa: BLE001 (a program export cannot hold: trace it each start)
                log.warning("program cache: %s is not stored (%s: %s)", name, type(e).__name__,
                            str(e).splitlines()[0][:200])
                return fn.lower(*args)
            try:
                self._store(path, exported.serialize())
            except OSError as e:  # a full or read-only disk costs the next start a trace, no more
                log.warning("program cache: could not store %s: %s", path.name, e)
        else:
            self.hits += 1
        starts = [0]  # where each argument's leaves begin among all the leaves
        for arg_tree in tree.children():
            starts.append(starts[-1] + arg_tree.num_leaves)
        donated = tuple(i for a in donate_argnums for i in range(starts[a], starts[a + 1]))
        return _FlatLowered(jax.jit(exported.call, donate_argnums=donated).lower(*leaves))

    @staticmethod
    def _load(path: Path):
        try:
            return export.deserialize(bytearray(path.read_bytes()))
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 (truncated or from another flatbuffers schema: rebuild)
            path.unlink(missing_ok=True)
            return None

    @staticmethod
    def _store(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic: a concurrent start reads a whole file or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # no half-written file left behind
            raise
