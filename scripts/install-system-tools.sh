#!/usr/bin/env bash
# Debian packages the project uses: systemd-analyze and systemd-sysusers (package systemd) check the
# unit files and the system user in the tests; sqlite3 and setpriv (util-linux) take the documented
# backup and run the documented steps as the service user; a C compiler and OpenSSL's headers
# (libssl-dev) build the compiled Bitcoin scan (src/depositwatch/chains/_btcscan.c) and TRON reading
# (_tronscan.c beside it), which `pip install` leaves out, quietly, without them. prometheus (promtool
# and the server) runs the alerting rules' unit tests and the scrape test of deploy/prometheus and
# deploy/grafana; the tests start the server themselves, so the package's own service is not needed.
# Run it before `pip install` (scripts/test.sh does).
set -euo pipefail
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v systemd-sysusers >/dev/null || missing+=(systemd)
# The install walk (tests/daemon/test_install.py): SQLite backups, and running steps as the service's uid.
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v gcc >/dev/null || missing+=(gcc)
[ -f /usr/include/openssl/sha.h ] || missing+=(libssl-dev)
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || missing+=(prometheus)
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
