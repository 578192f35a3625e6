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
exec .venv/bin/pytest "$@"
