"""The server's tokenizer loader: the same tokenizer AutoTokenizer gives, without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

TEXTS = ["Hello world", " leading space", "naïve café 😀 \n\n  tabs\t", "<|im_start|>user\nhi<|im_end|>", ""]


def _same_tokenizer(model_dir):
    from transformers import AutoTokenizer

    from jaxserve.builder import load_tokenizer

    ours, auto = load_tokenizer(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    for text in TEXTS:
        assert ours(text)["input_ids"] == auto(text)["input_ids"], text
        ids = auto.encode(text)
        assert ours.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    if auto.chat_template:
        assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
            auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (ours.eos_token_id, ours.bos_token_id, ours.all_special_ids, len(ours)) == \
        (auto.eos_token_id, auto.bos_token_id, auto.all_special_ids, len(auto))


def _imports_torch(model_dir) -> bool:
    code = ("import sys; from jaxserve.builder import load_tokenizer; "
            f"load_tokenizer({str(model_dir)!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_tiny_tokenizer_matches_auto(tiny_model_dir):
    _same_tokenizer(tiny_model_dir)


@pytest.mark.slow
def test_smollm2_tokenizer_matches_auto_without_torch(smollm2_dir):
    pytest.importorskip("torch")  # the import this loader avoids; without torch there is nothing to see
    _same_tokenizer(smollm2_dir)
    assert not _imports_torch(smollm2_dir)
