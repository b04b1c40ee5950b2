#!/usr/bin/env bash
# One gateway node and one Samba smbd, side by side in the same run:
# smb2.bench.echo, smb2.bench.path-contention-shared, smb2.bench.oplock1 and
# smbclient put/get of one big file, plain, signed and encrypted. Prints each
# figure and the ratio gateway/smbd.
#
# usage: bench/node_vs_smbd.sh [SECONDS] [SIZE_MIB] [RUNS]   (defaults 10 1024 3)
# Needs root (smbd). Ports: gateway 4451, smbd 4452, both on 127.0.0.1.
# GW_TREE=DIR runs the gateway from another checkout of the project (a git
# worktree of an older commit, say) with this checkout's .venv: before and
# after, measured against the same smbd. SKIP_TORTURE=1 runs put/get only.
# GW_ARGS adds flags to the gateway's command line, e.g. GW_ARGS='--workers 2'.
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECS=${1:-10}; SIZE=${2:-1024}; RUNS=${3:-3}
WORK=$(mktemp -d /tmp/smbgw-bench.XXXXXX)
chmod 755 "$WORK"  # smbd serves the share as user test, who must reach it
GW_PORT=4451; SMBD_PORT=4452
TESTS="smb2.bench.echo smb2.bench.path-contention-shared smb2.bench.oplock1"
bash scripts/install.sh >/dev/null 2>&1 || { echo "install failed" >&2; exit 1; }
mkdir -p "$WORK/gw/share"; printf 'test:test\n' > "$WORK/gw/users"
GW_TREE=$(cd "${GW_TREE:-.}" && pwd)
# From GW_TREE as the working directory, -m imports that tree's gateway.
(cd "$GW_TREE" && exec "$OLDPWD/.venv/bin/python" -m gateway.cli serve \
  --listen 127.0.0.1:$GW_PORT --share share="$WORK/gw/share" \
  --users "$WORK/gw/users" --log-level WARNING ${GW_ARGS:-} > "$WORK/gw.log" 2>&1) &
GW_PID=$!
cleanup() {
  kill "$GW_PID" 2>/dev/null || true
  .venv/bin/python -m bench.samba stop "$WORK/smbd" >/dev/null 2>&1 || true
  rm -f "$WORK"/src-*.bin
}
trap cleanup EXIT
.venv/bin/python -m bench.samba smbd "$WORK/smbd" --port $SMBD_PORT >/dev/null || exit 1
sleep 2
declare -A R
[ -n "${SKIP_TORTURE:-}" ] && TESTS=
for server in gateway:$GW_PORT smbd:$SMBD_PORT; do
  torture_bench "${server%:*}" "${server#*:}" "$SECS" 4
  for prot in "" sign encrypt; do
    smbclient_rate "${server%:*}" "${server#*:}" "$SIZE" "$RUNS" $prot
  done
done
ratios gateway smbd $TESTS put get put-sign get-sign put-encrypt get-encrypt
echo "(echo/path-contention: ops/s; oplock1: ops/s; put/get: MiB/s median of $RUNS x $SIZE MiB; logs in $WORK)"
