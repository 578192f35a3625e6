#!/usr/bin/env bash
# Installs foundry's anvil (a local Ethereum node for tests, the demo and benchmarks) from the npm
# registry into the git-ignored project folder .tools/. Idempotent: does nothing when the pinned
# binary is already there and runs. Prints the binary's path on the last line.
set -euo pipefail

ANVIL_VERSION="${ANVIL_VERSION:-1.7.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"

case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) echo "install-anvil: unsupported OS $(uname -s)" >&2; exit 1 ;;
esac
case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "install-anvil: unsupported CPU $(uname -m)" >&2; exit 1 ;;
esac
BIN="$TOOLS/node_modules/@foundry-rs/anvil-$os-$arch/bin/anvil"

runs() {
    [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$ANVIL_VERSION"
}

if runs; then
    echo "install-anvil: anvil $ANVIL_VERSION already installed" >&2
else
    command -v npm >/dev/null || { echo "install-anvil: npm is needed (apt-get install nodejs npm)" >&2; exit 1; }
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error "@foundry-rs/anvil@$ANVIL_VERSION" >&2
    # Some npm versions leave the platform binary without its execute bit.
    [ -f "$BIN" ] && chmod +x "$BIN"
    if ! runs; then
        echo "install-anvil: $BIN does not run after installation" >&2
        "$BIN" --version >&2 || true
        exit 1
    fi
fi
"$BIN" --version | head -n 1 >&2
echo "$BIN"
