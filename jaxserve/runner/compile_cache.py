"""JAX's persistent compilation cache, a process-wide count of backend compilations, and giving
a compilation's freed scratch memory back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from pathlib import Path

import jax

_lock = threading.Lock()
_count = 0
_listening = False


def _on_event(event: str, duration: float, **kwargs) -> None:
    global _count
    if event == "/jax/core/compile/backend_compile_duration":
        with _lock:
            _count += 1


def backend_compile_count() -> int:
    """Every XLA compilation in this process since the listener was installed."""
    global _listening
    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening = True
    return _count


def enable_persistent_cache() -> Path | None:
    """On by default so a second start skips XLA compilation; JAXSERVE_COMPILE_CACHE=off
    disables it, any other value is the directory."""
    setting = os.environ.get("JAXSERVE_COMPILE_CACHE", "")
    if setting.lower() in ("off", "0", "false"):
        return None
    path = Path(setting or Path.home() / ".cache" / "jaxserve" / "xla")
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _load_libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_libc = _load_libc()


def release_free_memory() -> None:
    """Return the heap pages a finished XLA compilation freed to the OS (glibc's malloc_trim; a
    no-op elsewhere), which glibc would otherwise keep for the life of the process."""
    if _libc is not None:
        _libc.malloc_trim(0)
