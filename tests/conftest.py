"""Shared fixtures: a tiny random-weight model (generated locally) and, for slow tests, SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests/support holds plain helpers; their asserts get pytest's messages too
pytest.register_assert_rewrite("tests.support")

from tests.support.configs import TINY_CONFIG, smollm2_overrides


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


@pytest.fixture(scope="session")
def smollm2_reference_llm(smollm2_dir):
    from jaxserve.llm import LLM

    return LLM(None, progress=False, **smollm2_overrides(smollm2_dir, "reference"))
