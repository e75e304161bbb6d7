"""How fast llama.cpp reads a prompt and writes tokens with kb's bundled Qwen, per build and setting.

    python scripts/bench_llm.py                                   # the llama-cpp-python installed in .venv
    python scripts/bench_llm.py --build avx2=/tmp/llama-avx2      # and other builds (pip install --no-deps --target DIR)

On a CPU an answer's time to first token is the prompt read (the sources and question, ~1,100 tokens at kb's
defaults); the rest of the answer is token generation. Each configuration runs in its own process (a build
is picked by PYTHONPATH) and reports the CPU features its build uses, prompt tokens/s over a prompt of
``--prompt-tokens`` real documentation tokens (best of ``--repeats``) and generation tokens/s. Writes
``evals/reports/bench-llm.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "bench-llm.md"


def measure(prompt_tokens: int, repeats: int, flash_attn: bool) -> dict[str, object]:
    """One configuration, in this process: the llama_cpp that PYTHONPATH picked."""
    import llama_cpp

    from kb.llm.local import default_gguf

    threads = os.cpu_count() or 2
    llama = llama_cpp.Llama(
        model_path=str(default_gguf()),
        n_ctx=4096,
        n_threads=threads,
        n_batch=512,
        flash_attn=flash_attn,
        verbose=False,
    )
    text = (REPO / "README.md").read_text(encoding="utf-8")
    tokens = llama.tokenize(text.encode("utf-8"))[:prompt_tokens]
    reads = []
    for _ in range(repeats):
        llama.reset()
        started = time.perf_counter()
        llama.eval(tokens)
        reads.append(time.perf_counter() - started)
    llama.reset()
    generated, first = 0, 0.0
    for _ in llama.generate(tokens[:64], temp=0.0):
        generated += 1
        if generated == 1:
            first = time.perf_counter()  # the 64-token prompt is read: from here on, generation only
        if generated == 65:
            break
    features = llama_cpp.llama_print_system_info().decode().removeprefix("CPU :")
    return {
        "features": " ".join(p.split("=")[0].strip() for p in features.split("|") if p.strip().endswith("= 1")),
        "threads": threads,
        "prompt_tokens": len(tokens),
        "prompt_s": min(reads),
        "prompt_tok_s": len(tokens) / min(reads),
        "gen_tok_s": (generated - 1) / (time.perf_counter() - first),
    }


def run_config(build: str | None, flash_attn: bool, args: argparse.Namespace) -> dict[str, object]:
    env = dict(os.environ)
    if build:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (build, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, __file__, "--child", json.dumps([args.prompt_tokens, args.repeats, flash_attn])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{build or 'installed build'}: the measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another llama-cpp-python, installed with pip install --target DIR",
    )
    parser.add_argument("--prompt-tokens", type=int, default=1100, choices=range(64, 4000), metavar="64..3999")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    builds: list[tuple[str, str | None]] = [("installed", None)]
    for build in args.build:
        name, _, path = build.partition("=")
        if not path or not Path(path, "llama_cpp").is_dir():
            parser.error(f"--build {build}: expected NAME=DIR, DIR holding a llama_cpp package (pip install --target)")
        builds.append((name, path))
    rows = []
    for name, path in builds:
        for flash_attn in (False, True):
            result = run_config(path, flash_attn, args)
            rows.append((name, flash_attn, result))
            print(
                f"{name:10} flash_attn={flash_attn!s:5} prompt {result['prompt_tok_s']:6.1f} tok/s "
                f"({result['prompt_tokens']} in {result['prompt_s']:.2f} s)  generate "
                f"{result['gen_tok_s']:5.1f} tok/s  [{result['features']}]",
                flush=True,
            )
    lines = [
        "# llama.cpp speed with the bundled Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        "",
        "Command: `python scripts/bench_llm.py" + "".join(f" --build {b}" for b in args.build) + "`",
        "",
        f"A prompt of {args.prompt_tokens} README tokens read from an empty cache (best of {args.repeats}), then 64 "
        f"tokens generated greedily after a 64-token prompt; {rows[0][2]['threads']} threads, one process per row.",
        "A build other than the installed one is a `pip install --no-deps --target DIR llama-cpp-python` of the same version,"
        " with `CMAKE_ARGS` from `scripts/llama_cmake_args.sh` (`KB_LLAMA_CPU=portable` for AVX2 only).",
        "",
        "| build | CPU kernels | flash attention | prompt tokens/s | prompt read s | generation tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, flash_attn, r in rows:
        lines.append(
            f"| {name} | {r['features']} | {'on' if flash_attn else 'off'} | {r['prompt_tok_s']:.1f} "
            f"| {r['prompt_s']:.2f} | {r['gen_tok_s']:.1f} |"
        )
    REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {REPORT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
