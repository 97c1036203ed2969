"""Where the repository and the tiny model's config are, and a small SmolLM2 engine's overrides."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


def smollm2_overrides(model_dir: Path, backend: str) -> dict:
    """A small-footprint SmolLM2 engine for tests: two buckets, 512-token context."""
    return {"model.path": str(model_dir), "model.attention_backend": backend,
            "model.max_model_len": 512, "cache.num_pages": 256,
            "scheduler.max_num_seqs": 8, "scheduler.max_num_batched_tokens": 256,
            "scheduler.token_buckets": [16, 256], "scheduler.seq_buckets": [8]}
