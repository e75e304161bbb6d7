"""The CPU flags scripts/install.sh builds llama.cpp with (scripts/llama_cmake_args.sh), on real cpuinfo lines.

An AVX-512 build on a CPU without AVX-512 dies with "illegal instruction", and AMX segfaulted here: both are
install-time mistakes a user only sees at their first answer, so the flag choice is tested on the flags line
of each kind of CPU rather than trusted.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "llama_cmake_args.sh"

# /proc/cpuinfo flags lines, trimmed to the x86 features that matter (the real lines are much longer).
SAPPHIRE_RAPIDS = (
    "fpu sse sse2 ssse3 fma avx f16c avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 "
    "avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx_vnni amx_bf16 amx_tile amx_int8"
)
HASWELL = "fpu sse sse2 ssse3 fma avx f16c avx2 bmi2"
XEON_PHI_LIKE = "fpu sse sse2 avx avx2 fma f16c avx512f avx512cd avx512er avx512pf"  # no BW/DQ/VL


def cmake_args(tmp_path: Path, flags: str, mode: str | None = None) -> subprocess.CompletedProcess[str]:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    env = {k: v for k, v in os.environ.items() if k != "KB_LLAMA_CPU"}
    if mode is not None:
        env["KB_LLAMA_CPU"] = mode
    return subprocess.run(["bash", str(SCRIPT), str(cpuinfo)], capture_output=True, text=True, env=env)


def options(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(arg.removeprefix("-D").split("=", 1) for arg in result.stdout.split())


def test_an_avx512_cpu_gets_its_avx512_and_vnni_kernels_but_never_amx_or_native(tmp_path: Path) -> None:
    got = options(cmake_args(tmp_path, SAPPHIRE_RAPIDS))
    assert {k: got[k] for k in ("GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16")} == {
        "GGML_AVX2": "ON",
        "GGML_AVX512": "ON",
        "GGML_AVX512_VNNI": "ON",
        "GGML_AVX512_BF16": "ON",
    }
    assert got["GGML_AVX_VNNI"] == "ON"
    assert got["GGML_NATIVE"] == "OFF"
    assert {got[k] for k in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")} == {"OFF"}


@pytest.mark.parametrize("flags", [HASWELL, XEON_PHI_LIKE], ids=["avx2-only", "avx512f-without-bw-dq-vl"])
def test_a_cpu_without_the_whole_avx512_set_gets_avx2_only(tmp_path: Path, flags: str) -> None:
    got = options(cmake_args(tmp_path, flags))
    assert got["GGML_AVX2"] == "ON" and got["GGML_NATIVE"] == "OFF"
    assert not any(k.startswith("GGML_AVX512") or k == "GGML_AVX_VNNI" for k in got)


@pytest.mark.parametrize("flags_line", ["Features\t: fp asimd evtstrm aes crc32", ""], ids=["arm", "no-flags-line"])
def test_a_cpuinfo_without_an_x86_flags_line_gets_the_base_flags_not_a_silent_exit(
    tmp_path: Path, flags_line: str
) -> None:
    # ARM's cpuinfo says "Features", not "flags": grep found nothing and set -e/pipefail ended the script
    # without a word, and install.sh with it.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{flags_line}\n")
    result = subprocess.run(["bash", str(SCRIPT), str(cpuinfo)], capture_output=True, text=True)
    assert options(result) == options(cmake_args(tmp_path, HASWELL))


def test_portable_mode_leaves_out_what_the_build_host_has(tmp_path: Path) -> None:
    assert options(cmake_args(tmp_path, SAPPHIRE_RAPIDS, "portable")) == options(cmake_args(tmp_path, HASWELL))


def test_an_unknown_mode_is_refused_by_name(tmp_path: Path) -> None:
    result = cmake_args(tmp_path, SAPPHIRE_RAPIDS, "native")
    assert result.returncode == 2 and "KB_LLAMA_CPU=native" in result.stderr and "portable" in result.stderr


def test_the_docker_image_is_built_portable() -> None:
    # An image is built on one host and run on others: it must not carry the build host's AVX-512.
    assert "ARG KB_LLAMA_CPU=portable" in (REPO / "Dockerfile").read_text()
    assert "KB_LLAMA_CPU=${KB_LLAMA_CPU} bash scripts/install.sh" in (REPO / "Dockerfile").read_text()
