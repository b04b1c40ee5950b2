#!/usr/bin/env bash
# A 2-node gateway cluster (Redis bus) and a 2-node clustered Samba (CTDB),
# side by side in the same run, smbtorture's connections spread over both
# nodes of each (--unclist): smb2.bench.echo, smb2.bench.path-contention-shared
# and smb2.bench.oplock1. Prints each figure and the ratio gateway/ctdb.
#
# usage: bench/cluster_vs_ctdb.sh [SECONDS] [NPROCS]   (defaults 10 4)
# Needs root (smbd, ctdbd, loopback aliases). Nodes on 127.0.0.1 and 127.0.0.2;
# ports: gateway 4453, clustered Samba 4454. Installs ctdb if it is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}; NPROCS=${2:-4}
T=../shared/torture
WORK=$(mktemp -d /tmp/smbgw-cbench.XXXXXX)
chmod 755 "$WORK"
GW_PORT=4453; CTDB_PORT=4454
bash scripts/install.sh >/dev/null 2>&1 || { echo "install failed" >&2; exit 1; }
command -v ctdbd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q ctdb >/dev/null
mkdir -p "$WORK/gw/share"; printf 'test:test\n' > "$WORK/gw/users"
.venv/bin/smbgw cluster up --nodes 2 --port $GW_PORT --share share="$WORK/gw/share" \
  --users "$WORK/gw/users" --log-level WARNING > "$WORK/gw.out" 2> "$WORK/gw.log" &
GW_PID=$!
cleanup() {
  kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null
  bash $T/stop-ctdb-cluster.sh "$WORK/ctdb" >/dev/null 2>&1 || true
}
trap cleanup EXIT
bash $T/start-ctdb-cluster.sh "$WORK/ctdb" 2 $CTDB_PORT > "$WORK/ctdb.out" 2>&1 \
  || { echo "clustered Samba did not start; see $WORK/ctdb.out" >&2; exit 1; }
for _ in $(seq 100); do grep -q Ctrl-C "$WORK/gw.out" && break; sleep 0.2; done
printf '//127.0.0.1/share\n//127.0.0.2/share\n' > "$WORK/unclist"
TESTS="smb2.bench.echo smb2.bench.path-contention-shared smb2.bench.oplock1"
declare -A R
bench() { # name port -> fills R[name,test]
  local name=$1 port=$2 line t v
  while IFS=$'\t' read -r t _ _ line; do
    case $t in
      smb2.bench.oplock1) v=$(grep -oE '[0-9.]+ ops/second' <<<"$line" | awk '{print $1}');;
      *) v=$(grep -oE 'num/s=[0-9.]+' <<<"$line" | head -1 | cut -d= -f2);;
    esac
    R[$name,$t]=${v:-0}
  done < <(OUTDIR=$WORK/out-$name BENCH_TESTS="$TESTS" \
           bash $T/bench-torture.sh 127.0.0.1 share $port "$SECS" "$NPROCS" 1 -- --unclist="$WORK/unclist")
}
bench gateway $GW_PORT
bench ctdb $CTDB_PORT
printf '%-36s %14s %14s %8s\n' test gateway-2node ctdb-2node ratio
for t in $TESTS; do
  g=${R[gateway,$t]:-0}; s=${R[ctdb,$t]:-0}
  printf '%-36s %14s %14s %8s\n' "$t" "$g" "$s" "$(awk -v g="$g" -v s="$s" 'BEGIN{ if (s>0) printf "%.2f", g/s; else print "-" }')"
done
echo "(ops/s over ${SECS}s, $NPROCS connections spread over 2 nodes; logs in $WORK)"
