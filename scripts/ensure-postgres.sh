#!/usr/bin/env bash
# Start the machine's PostgreSQL cluster if it is not answering on 127.0.0.1:5432.
set -euo pipefail
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    exit 0
fi
if ! command -v pg_ctlcluster >/dev/null; then
    echo "PostgreSQL is not running on 127.0.0.1:5432 and pg_ctlcluster is not installed;" \
         "set DEPOSITWATCH_TEST_PG to a reachable server" >&2
    exit 1
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
pg_ctlcluster --skip-systemctl-redirect "$version" main start
for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && exit 0
    sleep 1
done
echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
exit 1
