# The two commands of the README: `make demo` and `make test`.
.PHONY: demo test lint bench setup

setup:
	bash scripts/bootstrap.sh

demo: setup
	.venv/bin/depositwatch demo

test:
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy

bench:
	EXTRAS=test,bench bash scripts/bootstrap.sh
	.venv/bin/python bench/run_all.py
