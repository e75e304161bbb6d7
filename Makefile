# The README's two commands: `make demo` (install + main job) and `make test`.
.PHONY: demo test lint install

.venv/.kb-installed: pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh

install: .venv/.kb-installed

demo: .venv/.kb-installed
	HF_HUB_OFFLINE=1 .venv/bin/kb demo

test: .venv/.kb-installed
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

lint: .venv/.kb-installed
	.venv/bin/ruff check kb tests evals scripts
