#!/usr/bin/env bash
# Debian packages the project uses: systemd-analyze (package systemd) checks the unit files in the
# tests; a C compiler and OpenSSL's headers (libssl-dev) build the compiled Bitcoin scan
# (src/depositwatch/chains/_btcscan.c), which `pip install` leaves out, quietly, without them.
# Run it before `pip install` (scripts/test.sh does).
set -euo pipefail
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v gcc >/dev/null || missing+=(gcc)
[ -f /usr/include/openssl/sha.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
