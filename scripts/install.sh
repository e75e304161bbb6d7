#!/usr/bin/env bash
# Installs kb and its test tools into .venv from this checkout's own files.
# torch goes first, pinned to the CPU build: any other spec pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2> >(grep -v "is ignored" >&2)
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]" 2> >(grep -v "is ignored" >&2)
touch .venv/.kb-installed
