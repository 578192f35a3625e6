#!/usr/bin/env bash
# Set up everything depositwatch and its tests need, idempotently:
# a virtualenv in .venv with the package and its test extras, and the anvil node in .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "depositwatch needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Quiet, but keep errors; pip prints nothing when everything is already there.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS:-test,report}]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import depositwatch" # fails loudly if the install did not work
bash scripts/install-anvil.sh
