"""jaxserve: an LLM inference server on JAX/XLA."""

from jaxserve.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    if name == "LLM":  # importing jax is slow; pay for it only when the engine is wanted
        from jaxserve.llm import LLM

        return LLM
    raise AttributeError(name)
