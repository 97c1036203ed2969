#!/usr/bin/env bash
# Fuzz jaxserve's OpenAI operations with schemathesis, from OpenAI's own OpenAPI description:
# whatever a client sends, the answer must never be a 5xx.
#
#   scripts/fuzz_api.sh                 # starts `jaxserve run` on the tiny model, fuzzes, stops it
#   scripts/fuzz_api.sh URL [MODEL]     # fuzzes a server already running at URL (e.g. .../v1)
#
# Environment: EXAMPLES (per operation, default 50), SPEC (default ../shared/specs/...),
# CHECKS (schemathesis checks; default: no 5xx, and each response's content type and schema as
# the spec documents them; OpenAI's spec documents no 4xx, so status codes are not checked),
# JAXSERVE_API_KEY (sent as the bearer token when set). Needs `pip install schemathesis`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SPEC="${SPEC:-$ROOT/../shared/specs/openai-openapi.yaml}"
EXAMPLES="${EXAMPLES:-50}"
CHECKS="${CHECKS:-not_a_server_error,content_type_conformance,response_schema_conformance}"
URL="${1:-}"
export JAXSERVE_FUZZ_MODEL="${2:-tiny-random-llama}"
SERVER_PID=""

cleanup() { if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

if [[ -z "$URL" ]]; then
  PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  LOG="$(mktemp -t jaxserve-fuzz-XXXX.log)"
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python -m jaxserve.cli run \
    --config "$ROOT/configs/tiny.yaml" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
  SERVER_PID=$!
  URL="http://127.0.0.1:$PORT/v1"
  echo "jaxserve starting on $URL (log: $LOG)"
  for _ in $(seq 1 240); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" == 200 ]]; then break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG"; exit 1; }
    sleep 1
  done
fi

AUTH=()
if [[ -n "${JAXSERVE_API_KEY:-}" ]]; then AUTH=(-H "Authorization: Bearer $JAXSERVE_API_KEY"); fi

PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=fuzz_api_hooks \
  schemathesis run "$SPEC" --url "$URL" "${AUTH[@]}" \
  --include-operation-id createChatCompletion \
  --include-operation-id createCompletion \
  --include-operation-id listModels \
  --checks "$CHECKS" -n "$EXAMPLES" --workers 1
