#!/usr/bin/env bash
# Compiles the devnet test contracts (src/depositwatch/devnet/*.sol) with the pinned solcjs from the
# npm registry (installed into the git-ignored .tools/) and writes {"abi": ..., "bytecode": "0x..."}
# beside each source. The compiled files are committed, so tests and the demo need no compiler.
set -euo pipefail

SOLC_VERSION="${SOLC_VERSION:-0.8.28}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
DEVNET="$ROOT/src/depositwatch/devnet"
SOLCJS="$TOOLS/node_modules/.bin/solcjs"

if ! { [ -x "$SOLCJS" ] && "$SOLCJS" --version | grep -q "^$SOLC_VERSION+"; }; then
    command -v npm >/dev/null || { echo "compile-contracts: npm is needed" >&2; exit 1; }
    npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error "solc@$SOLC_VERSION" >&2
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
cd "$DEVNET"
for source in TestToken TestNFT; do
    "$SOLCJS" --bin --abi --optimize --optimize-runs 200 --output-dir "$OUT" "$source.sol" >&2
    node -e '
        const fs = require("fs");
        const [abiFile, binFile, outFile] = process.argv.slice(1);
        const artefact = {
            abi: JSON.parse(fs.readFileSync(abiFile, "utf8")),
            bytecode: "0x" + fs.readFileSync(binFile, "utf8").trim(),
        };
        fs.writeFileSync(outFile, JSON.stringify(artefact, null, 1) + "\n");
    ' "$OUT/${source}_sol_${source}.abi" "$OUT/${source}_sol_${source}.bin" "$DEVNET/$source.json"
    echo "compile-contracts: wrote src/depositwatch/devnet/$source.json" >&2
done
