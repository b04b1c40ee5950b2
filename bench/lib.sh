# Sourced by the benchmark scripts: figures from Samba's client tools into the
# associative array R[SERVER,TEST], each server on 127.0.0.1 with share [share],
# user test%test. Needs WORK (a directory for logs) and TESTS set.

# torture_bench SERVER PORT SECS NPROCS [smbtorture args...]
# smbtorture's micro-benchmarks in $TESTS (smb2.bench.*), NPROCS connections,
# one request outstanding on each: oplock1 in ops/s, the others in num/s.
torture_bench() {
  local name=$1 port=$2 secs=$3 nprocs=$4 t log line
  shift 4
  mkdir -p "$WORK/out-$name"
  for t in $TESTS; do
    log=$WORK/out-$name/$t.log
    smbtorture //127.0.0.1/share -U test%test -p "$port" --target=samba3 \
      --option=torture:timelimit="$secs" --option=torture:nprocs="$nprocs" \
      --option=torture:qdepth=1 --option=torture:progress=no "$@" "$t" >"$log" 2>&1
    line=$(tr '\r' '\n' <"$log" | grep -E 'ops/second|second: (open|echo)\[' | tail -1)
    case $t in
      smb2.bench.oplock1) R[$name,$t]=$(grep -oE '[0-9.]+ ops/second' <<<"$line" | cut -d' ' -f1) ;;
      *) R[$name,$t]=$(grep -oE 'num/s=[0-9.]+' <<<"$line" | head -1 | cut -d= -f2) ;;
    esac
    echo "$name $t: ${R[$name,$t]:-no figure, see $log}" >&2
  done
}

# smbclient_rate SERVER PORT SIZE_MIB RUNS [PROTECTION]
# Median MiB/s of RUNS puts, then RUNS gets, of one file of random data; each
# run is the wall time of one smbclient process (connect and logon included),
# each put overwriting the file an untimed put wrote first.
# PROTECTION is smbclient's --client-protection (sign or encrypt): the
# figures go to R[SERVER,put-sign] and so on; without it, R[SERVER,put].
smbclient_rate() {
  local name=$1 port=$2 size=$3 runs=$4 prot=${5:-} src=$WORK/src-$3M.bin op cmd i t0 t1
  [ -f "$src" ] || head -c $((size * 1048576)) /dev/urandom >"$src"
  cat "$src" >/dev/null # the put reads from the page cache
  local -a opts=()
  [ -n "$prot" ] && opts=(--client-protection="$prot")
  smbc() { smbclient //127.0.0.1/share -U test%test -p "$port" "${opts[@]}" -c "$1" >/dev/null 2>&1; }
  # One untimed put first: the first write of a new file (block allocation)
  # costs either server about half its speed and made medians of 3 noisy.
  smbc "put $src big.bin"
  for op in put get; do
    if [ $op = put ]; then cmd="put $src big.bin"; else cmd="get big.bin /dev/null"; fi
    R[$name,$op${prot:+-$prot}]=$(for i in $(seq "$runs"); do
      t0=$(date +%s.%N)
      smbc "$cmd" || { echo "$name $op run $i failed" >&2; continue; }
      t1=$(date +%s.%N)
      awk -v a="$t0" -v b="$t1" -v s="$size" 'BEGIN { printf "%.1f\n", s / (b - a) }'
    done | sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
    echo "$name $op${prot:+ ($prot)}: ${R[$name,$op${prot:+-$prot}]:-failed} MiB/s" >&2
  done
  smbc "del big.bin"
}

# ratios A B TEST...: a table of R[A,TEST], R[B,TEST] and A/B
ratios() {
  local a=$1 b=$2 t x y
  shift 2
  printf '%-36s %14s %14s %8s\n' test "$a" "$b" ratio
  for t in "$@"; do
    x=${R[$a,$t]:-0}; y=${R[$b,$t]:-0}
    printf '%-36s %14s %14s %8s\n' "$t" "$x" "$y" \
      "$(awk -v x="$x" -v y="$y" 'BEGIN { if (y > 0) printf "%.2f", x / y; else print "-" }')"
  done
}
