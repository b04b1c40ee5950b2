#!/usr/bin/env bash
# One gateway node and one Samba smbd, side by side in the same run:
# smb2.bench.echo, smb2.bench.path-contention-shared, smb2.bench.oplock1 and
# smbclient put/get of one big file. Prints each figure and the ratio
# gateway/smbd.
#
# usage: bench/node_vs_smbd.sh [SECONDS] [SIZE_MIB] [RUNS]   (defaults 10 1024 3)
# Needs root (smbd). Ports: gateway 4451, smbd 4452, both on 127.0.0.1.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}; SIZE=${2:-1024}; RUNS=${3:-3}
T=../shared/torture
WORK=$(mktemp -d /tmp/smbgw-bench.XXXXXX)
chmod 755 "$WORK"  # smbd serves the share as user test, who must reach it
GW_PORT=4451; SMBD_PORT=4452
bash scripts/install.sh >/dev/null 2>&1 || { echo "install failed" >&2; exit 1; }
mkdir -p "$WORK/gw/share"; printf 'test:test\n' > "$WORK/gw/users"
.venv/bin/smbgw serve --listen 127.0.0.1:$GW_PORT --share share="$WORK/gw/share" \
  --users "$WORK/gw/users" --log-level WARNING > "$WORK/gw.log" 2>&1 &
GW_PID=$!
cleanup() { kill "$GW_PID" 2>/dev/null || true; bash $T/stop-smbd.sh "$WORK/smbd" >/dev/null 2>&1 || true; }
trap cleanup EXIT
bash $T/start-smbd.sh "$WORK/smbd" $SMBD_PORT >/dev/null
sleep 2
declare -A R
bench() { # name port -> fills R[name,test]
  local name=$1 port=$2 line t v
  while IFS=$'\t' read -r t _ _ line; do
    case $t in
      smb2.bench.oplock1) v=$(grep -oE '[0-9.]+ ops/second' <<<"$line" | awk '{print $1}');;
      *) v=$(grep -oE 'num/s=[0-9.]+' <<<"$line" | head -1 | cut -d= -f2);;
    esac
    R[$name,$t]=${v:-0}
  done < <(OUTDIR=$WORK/out-$name BENCH_TESTS="smb2.bench.echo smb2.bench.path-contention-shared smb2.bench.oplock1" \
           bash $T/bench-torture.sh 127.0.0.1 share $port "$SECS" 4 1)
  local tp
  tp=$(bash $T/bench-smbclient.sh 127.0.0.1 share $port "$SIZE" "$RUNS" 2>/dev/null | tail -1)
  R[$name,put]=$(awk '{print $3}' <<<"$tp"); R[$name,get]=$(awk '{print $7}' <<<"$tp")
}
bench gateway $GW_PORT
bench smbd $SMBD_PORT
printf '%-36s %14s %14s %8s\n' test gateway smbd ratio
for t in smb2.bench.echo smb2.bench.path-contention-shared smb2.bench.oplock1 put get; do
  g=${R[gateway,$t]:-0}; s=${R[smbd,$t]:-0}
  printf '%-36s %14s %14s %8s\n' "$t" "$g" "$s" "$(awk -v g="$g" -v s="$s" 'BEGIN{ if (s>0) printf "%.2f", g/s; else print "-" }')"
done
echo "(echo/path-contention: ops/s; oplock1: ops/s; put/get: MiB/s median of $RUNS x $SIZE MiB)"
