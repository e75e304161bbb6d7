# The README's two commands: `make demo` (install + main job) and `make test`.
.PHONY: demo test lint install

.venv/.kb-installed: pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh

install: .venv/.kb-installed

demo: .venv/.kb-installed
	HF_HUB_OFFLINE=1 .venv/bin/kb demo

# Fast profile by default; KB_TEST_PROFILE=full (what .ci/run sets) also runs the tests marked slow.
PYTEST_PROFILE := $(if $(filter full,$(KB_TEST_PROFILE)),,-m "not slow")

test: .venv/.kb-installed
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q $(PYTEST_PROFILE)

lint: .venv/.kb-installed
	.venv/bin/ruff check kb tests evals scripts
