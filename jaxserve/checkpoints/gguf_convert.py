"""A Llama GGUF file -> a float32 Hugging Face folder (host side, numpy, no jax).

Weights are dequantized and renamed to HF Llama tensors, with the rotary row permutation of Q and
K that llama.cpp's converter applies undone; config.json comes from the GGUF's metadata and the
tokenizer (tokenizer.json, chat template) from its vocabulary, checked against the GGUF's own
tokenizer before the folder is accepted. `jaxserve.pull` uses it for SmolLM2.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from jaxserve.checkpoints.tiny import special_tokens_map


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
