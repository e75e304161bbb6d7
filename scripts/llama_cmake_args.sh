#!/usr/bin/env bash
# Prints the CMAKE_ARGS scripts/install.sh builds llama-cpp-python with.
#
#   bash scripts/llama_cmake_args.sh [CPUINFO]        # CPUINFO defaults to /proc/cpuinfo
#
# Always AVX2/FMA/F16C, never -march=native and never AMX: the native build compiled here and then
# segfaulted on its first decode, in the AMX code path. On top of that, the AVX-512 and VNNI kernels this
# CPU has (KB_LLAMA_CPU=auto, the default): on the 2-core AVX-512 Xeon kb is developed on they read a prompt
# 1.5x faster (91 vs 61 tokens/s with Qwen2.5-1.5B Q4_K_M), which is most of an answer's time to first token.
# The build runs on the machine that runs it, so what it detects is what it gets. KB_LLAMA_CPU=portable
# leaves them out, for a venv or image that moves to other machines (the Dockerfile does): an AVX-512 build
# dies with "illegal instruction" on a CPU without it.
set -euo pipefail
cpuinfo=${1:-/proc/cpuinfo}
args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
mode=${KB_LLAMA_CPU:-auto}
case "$mode" in
  auto | portable) ;;
  *) echo "KB_LLAMA_CPU=$mode: expected auto (this CPU's AVX-512/VNNI kernels) or portable (AVX2 only)" >&2; exit 2 ;;
esac
if [ "$mode" = auto ] && [ -r "$cpuinfo" ]; then
  # No "flags" line (ARM has "Features"; some sandboxes have none): nothing to add, ggml ignores the x86 options.
  flags=" $(grep -m1 '^flags' "$cpuinfo" | cut -d: -f2 || true) "
  has() {
    local flag
    for flag in "$@"; do [[ $flags == *" $flag "* ]] || return 1; done
  }
  # ggml's GGML_AVX512 compiles with -mavx512f/cd/vl/dq/bw: all five must be there.
  if has avx512f avx512cd avx512vl avx512dq avx512bw; then
    args+=" -DGGML_AVX512=ON"
    if has avx512_vnni; then args+=" -DGGML_AVX512_VNNI=ON"; fi
    if has avx512vbmi; then args+=" -DGGML_AVX512_VBMI=ON"; fi
    if has avx512_bf16; then args+=" -DGGML_AVX512_BF16=ON"; fi
  fi
  if has avx_vnni; then args+=" -DGGML_AVX_VNNI=ON"; fi
fi
echo "$args"
