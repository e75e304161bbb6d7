"""The long profile of the model-based tests (tests/test_properties.py): many examples, long step sequences.

    python scripts/property_soak.py --examples 40 --steps 60        # both backends; prints steps run

``make test`` runs a few examples of the same tests; this runs them at length and prints how many examples,
steps, reindexes and power cuts were checked against the model, per backend.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    env = {**os.environ, "KB_PROPERTY_EXAMPLES": str(args.examples), "KB_PROPERTY_STEPS": str(args.steps),
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    code = (
        "import sys, time; sys.path.insert(0, '.')\n"
        "import tests.test_properties as tp\n"
        "for backend in ('edge', 'qdrant-client'):\n"
        "    before = dict(tp.STEPS_RUN); t = time.time()\n"
        "    tp.test_index_state_machine(backend)\n"
        "    ran = {k: tp.STEPS_RUN[k] - before[k] for k in before}\n"
        "    print(f'{backend}: {ran} in {time.time() - t:.0f} s', flush=True)\n"
    )
    started = time.time()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env)
    acl = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_properties.py", "-k", "read_path"],
        cwd=REPO,
        env=env,
    )
    print(f"done in {time.time() - started:.0f} s")
    sys.exit(result.returncode or acl.returncode)


if __name__ == "__main__":
    main()
