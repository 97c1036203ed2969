"""Tiny random Llama and Qwen2 models as Hugging Face folders, written locally (host side, no jax).

They exist so engine, runner and HTTP tests can load a real folder through the same code path as
SmolLM2 in milliseconds, with no download. The weights are deterministic for a given seed, so a
parity test against transformers can run on them anywhere.

The tokenizer is byte-level BPE with no merges: the three ChatML special tokens first (ids 0-2,
as in SmolLM2), then one token per byte (byte b has id b + 3). Llama's vocab is exactly the
tokenizer's 259 tokens, like SmolLM2; Qwen2's is padded to 320 with unused embedding rows, like
the real Qwen2 checkpoints, so code that assumes vocab_size == len(tokenizer) fails in tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
BOS, EOS, UNK = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# SmolLM2-135M-Instruct's template, verbatim (the slow test checks it against the GGUF copy).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: two query heads share each KV head
    head_dim=16,
    max_position_embeddings=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
)
_PADDED_VOCAB = {"llama": None, "qwen2": 320}  # None: exactly the tokenizer's size
# transformers 5 rebuilds a Qwen2Tokenizer with this split regex and NFC whatever tokenizer.json
# says, so the qwen2 tokenizer.json uses them too: both paths must tokenize alike.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def write_tiny_model(folder: Path, arch: Literal["llama", "qwen2"], seed: int = 0,
                     **sizes: int) -> None:
    """Write config, float32 safetensors weights, tokenizer and generation config into `folder`;
    sizes override the default architecture (e.g. num_attention_heads=8)."""
    if arch not in _PADDED_VOCAB:
        raise ValueError(f"arch: must be one of {sorted(_PADDED_VOCAB)}, got {arch!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_tokenizer(arch)
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab_size = _PADDED_VOCAB[arch] or tokenizer.get_vocab_size()
    config = _config(arch, vocab_size) | sizes
    save_file(_weights(config, seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", _generation_config())
    _write_json(folder / "tokenizer_config.json", _tokenizer_config(arch))
    _write_json(folder / "special_tokens_map.json", special_tokens_map(BOS, EOS, EOS, UNK))


def byte_tokenizer(arch: Literal["llama", "qwen2"] = "llama") -> Tokenizer:
    """Byte-level BPE without merges: ChatML specials at ids 0-2, then byte b at id b + 3.

    Pre-tokenization follows the architecture's real tokenizer: GPT-2's regex for llama (as
    SmolLM2), Qwen2's split regex after NFC for qwen2.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for byte, char in enumerate(_bytes_to_unicode()):
        vocab[char] = len(SPECIAL_TOKENS) + byte
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    if arch == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # the specials are already in the vocab; this marks them special so they encode as one id
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    tokenizer.add_special_tokens(specials)
    return tokenizer


def special_tokens_map(bos: str, eos: str, pad: str, unk: str) -> dict[str, Any]:
    """special_tokens_map.json in SmolLM2-Instruct's layout."""
    return {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
    }


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255 (index = byte), as ByteLevel uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _config(arch: str, vocab_size: int) -> dict[str, Any]:
    common = dict(
        _SIZES,
        vocab_size=vocab_size,
        hidden_act="silu",
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(EOS),
        attention_dropout=0.0,
        initializer_range=0.02,
        torch_dtype="float32",
        use_cache=True,
    )
    if arch == "llama":
        return dict(
            common,
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=True,
        )
    return dict(
        common,
        architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
        tie_word_embeddings=False,
        use_sliding_window=False,
        max_window_layers=_SIZES["num_hidden_layers"],
    )


def _weights(config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        # std 1/sqrt(last dim): layer outputs keep unit scale and outweigh the embedding in the
        # residual stream, so greedy replies depend on the whole context instead of echoing the
        # last token (which a tied, large embedding makes the model do)
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    qwen2 = config["model_type"] == "qwen2"
    weights = {"model.embed_tokens.weight": normal(v, d)}  # f32[vocab, hidden]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = np.ones(d, np.float32)  # f32[hidden]
        weights[p + "self_attn.q_proj.weight"] = normal(q, d)  # f32[heads * head_dim, hidden]
        weights[p + "self_attn.k_proj.weight"] = normal(kv, d)  # f32[kv_heads * head_dim, hidden]
        weights[p + "self_attn.v_proj.weight"] = normal(kv, d)  # f32[kv_heads * head_dim, hidden]
        if qwen2:  # Qwen2 is the one common architecture with q/k/v biases
            weights[p + "self_attn.q_proj.bias"] = normal(q)  # f32[heads * head_dim]
            weights[p + "self_attn.k_proj.bias"] = normal(kv)  # f32[kv_heads * head_dim]
            weights[p + "self_attn.v_proj.bias"] = normal(kv)  # f32[kv_heads * head_dim]
        weights[p + "self_attn.o_proj.weight"] = normal(d, q)  # f32[hidden, heads * head_dim]
        weights[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)  # f32[hidden]
        weights[p + "mlp.gate_proj.weight"] = normal(f, d)  # f32[intermediate, hidden]
        weights[p + "mlp.up_proj.weight"] = normal(f, d)  # f32[intermediate, hidden]
        weights[p + "mlp.down_proj.weight"] = normal(d, f)  # f32[hidden, intermediate]
    weights["model.norm.weight"] = np.ones(d, np.float32)  # f32[hidden]
    if not config["tie_word_embeddings"]:
        weights["lm_head.weight"] = normal(v, d)  # f32[vocab, hidden]
    return weights


def _generation_config() -> dict[str, Any]:
    return {
        "bos_token_id": SPECIAL_TOKENS.index(BOS),
        "eos_token_id": SPECIAL_TOKENS.index(EOS),
        "pad_token_id": SPECIAL_TOKENS.index(EOS),
    }


def _tokenizer_config(arch: str) -> dict[str, Any]:
    return {
        "tokenizer_class": "Qwen2Tokenizer" if arch == "qwen2" else "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": UNK,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "add_bos_token": False,  # ChatML prompts carry their own <|im_start|>
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _SIZES["max_position_embeddings"],
        "chat_template": CHATML_TEMPLATE,
    }


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
