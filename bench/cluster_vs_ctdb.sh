#!/usr/bin/env bash
# A 2-node gateway cluster (Redis bus) and a 2-node clustered Samba (CTDB),
# side by side in the same run, smbtorture's connections spread over both
# nodes of each (--unclist): smb2.bench.echo, smb2.bench.path-contention-shared
# and smb2.bench.oplock1. Prints each figure and the ratio gateway/ctdb.
#
# usage: bench/cluster_vs_ctdb.sh [SECONDS] [NPROCS]   (defaults 10 4)
# Needs root (smbd, ctdbd, loopback aliases). Nodes on 127.0.0.1 and 127.0.0.2;
# ports: gateway 4453, clustered Samba 4454.
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECS=${1:-10}; NPROCS=${2:-4}
WORK=$(mktemp -d /tmp/smbgw-cbench.XXXXXX)
chmod 755 "$WORK"
GW_PORT=4453; CTDB_PORT=4454
TESTS="smb2.bench.echo smb2.bench.path-contention-shared smb2.bench.oplock1"
bash scripts/install.sh >/dev/null 2>&1 || { echo "install failed" >&2; exit 1; }
mkdir -p "$WORK/gw/share"; printf 'test:test\n' > "$WORK/gw/users"
.venv/bin/smbgw cluster up --nodes 2 --port $GW_PORT --share share="$WORK/gw/share" \
  --users "$WORK/gw/users" --log-level WARNING > "$WORK/gw.out" 2> "$WORK/gw.log" &
GW_PID=$!
cleanup() {
  kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null
  .venv/bin/python -m bench.samba stop "$WORK/ctdb" >/dev/null 2>&1 || true
}
trap cleanup EXIT
.venv/bin/python -m bench.samba ctdb "$WORK/ctdb" --nodes 2 --port $CTDB_PORT > "$WORK/ctdb.out" 2>&1 \
  || { echo "clustered Samba did not start; see $WORK/ctdb.out" >&2; exit 1; }
for _ in $(seq 100); do grep -q Ctrl-C "$WORK/gw.out" && break; sleep 0.2; done
printf '//127.0.0.1/share\n//127.0.0.2/share\n' > "$WORK/unclist"
declare -A R
torture_bench gateway-2node $GW_PORT "$SECS" "$NPROCS" --unclist="$WORK/unclist"
torture_bench ctdb-2node $CTDB_PORT "$SECS" "$NPROCS" --unclist="$WORK/unclist"
ratios gateway-2node ctdb-2node $TESTS
echo "(ops/s over ${SECS}s, $NPROCS connections spread over 2 nodes; logs in $WORK)"
