"""Shared fixtures: a tiny random-weight model (generated locally) and, for slow tests, SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from jaxserve.pull import resolve_model

    return resolve_model("tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_llm():
    """One engine for the whole session: compiling it is the slow part."""
    from jaxserve.llm import LLM

    return LLM(TINY_CONFIG, progress=False)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real default model, pulled once per machine into the normal cache."""
    from jaxserve.pull import resolve_model

    return resolve_model(os.environ.get("JAXSERVE_TEST_MODEL", "smollm2-135m-instruct"))
