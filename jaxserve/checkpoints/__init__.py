"""Host-side writers of Hugging Face checkpoint folders (no jax): a GGUF file dequantized into
one, and tiny random-weight models for tests."""
