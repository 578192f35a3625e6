#!/usr/bin/env bash
# The whole test suite: set up, start PostgreSQL if needed, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-tools.sh # first: the compiled Bitcoin scan needs libssl-dev to build
bash scripts/bootstrap.sh
bash scripts/ensure-postgres.sh
echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy (strict, src/)"
.venv/bin/mypy
echo "== pytest"
# Four worker processes (pytest-xdist): most tests wait on nodes, daemons and PostgreSQL rather than on a
# CPU, so four share the two cores well. `--dist loadfile` keeps each file on one worker, so a module-scoped
# fixture (the install walk's host) is built once. Branch coverage of the package is measured on every run,
# the daemons and CLI runs the tests start included (settings in pyproject.toml); its figure is printed last, after the slowest tests.
exec .venv/bin/pytest -n "${DEPOSITWATCH_TEST_WORKERS:-4}" --dist loadfile --cov --cov-report=term --durations=15 "$@"
