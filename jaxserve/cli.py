"""The ``jaxserve`` command: pull, generate, run."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

from jaxserve.config import Config, ConfigError, load_config

# flag -> dotted config field it overrides
RUN_OVERRIDES = {
    "host": "server.host",
    "port": "server.port",
    "api_key": "server.api_key",
    "served_model_name": "model.served_model_name",
    "max_model_len": "model.max_model_len",
    "max_num_seqs": "scheduler.max_num_seqs",
    "max_num_batched_tokens": "scheduler.max_num_batched_tokens",
    "chat_template": "model.chat_template",
    "seed": "model.seed",
    "model": "model.path",
    "attention_backend": "model.attention_backend",
    "dtype": "model.dtype",
    "weight_dtype": "model.weight_dtype",
    "kv_cache_dtype": "cache.dtype",
    "layers_per_call": "model.layers_per_call",
    "speculative_config": "scheduler.speculative_config",
    "tensor_parallel_size": "parallel.tensor_parallel_size",
    "nnodes": "parallel.nnodes",
    "node_rank": "parallel.node_rank",
    "master_addr": "parallel.master_addr",
    "master_port": "parallel.master_port",
    "max_waiting_requests": "server.max_waiting_requests",
    "max_body_bytes": "server.max_body_bytes",
    "max_nesting_depth": "server.max_nesting_depth",
    "max_prompts_per_request": "server.max_prompts_per_request",
    "max_request_id_length": "server.max_request_id_length",
    "max_stop_strings": "server.max_stop_strings",
    "max_stop_string_length": "server.max_stop_string_length",
    "drain_timeout": "server.drain_timeout",
    "enable_log_requests": "server.log_requests",
    "trust_request_chat_template": "server.trust_request_chat_template",
}


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a YAML config (configs/smollm2.yaml)")
    p.add_argument("--model", help="a known model name or a local Hugging Face folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="activations (and the K/V cache when its dtype is auto)")
    p.add_argument("--weight-dtype", choices=["auto", "float32", "bfloat16", "int8"],
                   help="stored weights (default: --dtype; auto: bfloat16 where the hardware "
                        "multiplies it natively); bfloat16 with float32 is mixed precision; "
                        "int8: per-channel int8 weights, activations quantized per token "
                        "(W8A8, costs accuracy: docs/performance.md)")
    p.add_argument("--kv-cache-dtype", choices=["auto", "float32", "bfloat16"],
                   help="the K/V cache (auto: the weights' dtype, or auto's float dtype under "
                        "int8 weights), as vLLM's flag")
    p.add_argument("--attention-backend", choices=["pallas", "reference", "auto"])
    p.add_argument("--layers-per-call", type=int,
                   help="decoder layers per compiled program (a divisor of the layer count); "
                        "default: the config's (none: the whole model in one program)")
    p.add_argument("--tensor-parallel-size", "-tp", type=int,
                   help="devices to split the model over (a divisor of its attention heads)")
    p.add_argument("--nnodes", type=int, help="processes sharing one mesh (jax.distributed)")
    p.add_argument("--node-rank", type=int, help="this process's rank; 0 serves HTTP")
    p.add_argument("--master-addr", help="rank 0's address, for jax.distributed")
    p.add_argument("--master-port", type=int, help="rank 0's coordination port")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--chat-template", help="a Jinja chat template, or a file holding one")
    p.add_argument("--seed", type=int)
    p.add_argument("--speculative-config", type=_json_object, metavar="JSON",
                   help='speculative decoding, as vLLM\'s flag: \'{"method": "ngram", '
                        '"num_speculative_tokens": 4, "prompt_lookup_max": 4}\'')


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="jaxserve", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    pull = sub.add_parser("pull", help="fetch a known model into the local cache")
    pull.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    pull.add_argument("--force", action="store_true", help="rebuild even if present")

    gen = sub.add_parser("generate", help="chat with the model once, streaming the reply")
    _add_model_flags(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--system", help="an optional system message")
    gen.add_argument("--max-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0)

    run = sub.add_parser("run", help="serve the OpenAI-compatible API")
    _add_model_flags(run)
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--api-key", default=os.environ.get("JAXSERVE_API_KEY"),
                     help="require this bearer token (default: $JAXSERVE_API_KEY)")
    run.add_argument("--served-model-name")
    _add_limit_flags(run)
    run.add_argument("--enable-log-requests", action=argparse.BooleanOptionalAction,
                     help="one jaxserve.access line per request (default: on); "
                          "--no-enable-log-requests turns it off, as vLLM names it")
    run.add_argument("--disable-log-requests", dest="enable_log_requests",
                     action="store_false", default=None, help=argparse.SUPPRESS)
    return root


def _add_limit_flags(run: argparse.ArgumentParser) -> None:
    """What a request may ask; defaults and meaning in docs/api.md."""
    run.add_argument("--max-waiting-requests", type=int,
                     help="waiting requests past which new ones get 503 (default 64 x max-num-seqs)")
    run.add_argument("--max-body-bytes", type=int, help="largest request body (413 past it)")
    run.add_argument("--max-nesting-depth", type=int, help="deepest JSON nesting of a body")
    run.add_argument("--max-prompts-per-request", type=int,
                     help="prompts in one completions request")
    run.add_argument("--max-request-id-length", type=int)
    run.add_argument("--max-stop-strings", type=int)
    run.add_argument("--max-stop-string-length", type=int)
    run.add_argument("--drain-timeout", type=float,
                     help="seconds SIGTERM waits for requests in flight (default: no bound)")
    run.add_argument("--trust-request-chat-template", action="store_true", default=None,
                     help="render a chat_template sent in a request (vLLM's flag; off by default)")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {field: getattr(args, flag) for flag, field in RUN_OVERRIDES.items()
                 if getattr(args, flag, None) is not None}
    return load_config(args.config, overrides)


def _generate(args: argparse.Namespace) -> None:
    from jaxserve.llm import LLM
    from jaxserve.sampling_params import SamplingParams

    llm = LLM(config_from_args(args))
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.prompt})
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    for out in llm.stream(llm.encode_chat(messages), params):
        print(out.outputs[0].text, end="", flush=True)
    print()


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.command == "pull":
            from jaxserve.pull import pull

            print(pull(args.name, force=args.force))
        elif args.command == "generate":
            _generate(args)
        elif args.command == "run":
            # no garbage collection until the engine is built, imports included; the server
            # turns it back on once the build has frozen its heap (gc_policy.py)
            gc.disable()
            from jaxserve.entrypoints.server import serve

            serve(config_from_args(args))
    except ConfigError as exc:
        sys.exit(f"jaxserve: invalid config: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
