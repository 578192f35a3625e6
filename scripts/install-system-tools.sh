#!/usr/bin/env bash
# Debian packages the tests use: systemd-analyze (package systemd) checks the unit files.
set -euo pipefail
if command -v systemd-analyze >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "systemd-analyze is missing: install Debian's systemd package (apt-get install systemd)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends systemd >/dev/null
