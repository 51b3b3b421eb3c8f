#!/usr/bin/env bash
#
# inbox_bench.sh: how much does exactly-once bookkeeping cost a small
# business transaction?  Compares, with pgbench, in one throwaway cluster:
#
#   1. business txn alone      UPDATE accounts + INSERT ledger
#   2. + hand-written dedup    ... + INSERT INTO processed ... ON CONFLICT DO NOTHING
#   3. + eo.process            ... + SELECT eo.process(<msg id>)
#   4. + eo.process_seq        ... + SELECT eo.process_seq('producer-<client>', <seq>)
#
# at 1, 2 and 8 clients, then the storage per remembered id of the
# hand-written table and of eo.inbox.
#
# Usage (one command, as root or as a normal user; the extension must be
# built and installed with "make install"):
#
#   test/bench/inbox_bench.sh
#
# Environment:
#   BENCH_SECONDS=15        duration of each measured run (3 = quick mode)
#   BENCH_SYNC_COMMIT=off   run with synchronous_commit=off (CPU-bound);
#                           default: the server default (on)
#   BENCH_CLIENTS="1 2 8"   client counts
#   BENCH_ROUNDS=1          repeat the whole series; the median TPS is reported
#   BENCH_SIZE_IDS=100000   ids for the storage comparison
#   BENCH_LOCALE=C          locale of the throwaway cluster (see below)
#   PG_CONFIG=pg_config     which PostgreSQL installation to use
#
# The cluster is created with locale C so that the hand-written table's
# text key compares with memcmp like eo.inbox's (COLLATE "C"); with e.g.
# BENCH_LOCALE=en_US.UTF-8 the hand-written table pays for strcoll().
#
# Results go to stdout and to test/bench/results/inbox-<timestamp>.md.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "inbox_bench: $*" >&2; exit 1; }

# ------------------------------------------------------------------ settings
seconds=${BENCH_SECONDS:-15}
sync_commit=${BENCH_SYNC_COMMIT:-}
clients_list=${BENCH_CLIENTS:-"1 2 8"}
rounds=${BENCH_ROUNDS:-1}
size_ids=${BENCH_SIZE_IDS:-100000}
locale=${BENCH_LOCALE:-C}
pg_config=${PG_CONFIG:-pg_config}

[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
[[ $size_ids =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_IDS must be a positive integer"
for c in $clients_list; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENTS must be positive integers"
done
case "$sync_commit" in
    "") sync_label="server default; BENCH_SYNC_COMMIT=off runs the same table CPU-bound" ;;
    on|off|local) sync_label="set by BENCH_SYNC_COMMIT=$sync_commit" ;;
    *) die "BENCH_SYNC_COMMIT must be on, off or local" ;;
esac
# A short warmup of every workload before measuring.
warmup=$(( seconds / 5 )); (( warmup >= 1 )) || warmup=1; (( warmup <= 5 )) || warmup=5

command -v "$pg_config" >/dev/null 2>&1 || die "$pg_config not found (set PG_CONFIG)"
bindir=$("$pg_config" --bindir)
pkglibdir=$("$pg_config" --pkglibdir)
sharedir=$("$pg_config" --sharedir)
if [[ ! -f $pkglibdir/eo_processing.so ]]; then
    echo "inbox_bench: $pkglibdir/eo_processing.so is missing:" >&2
    echo "  build and install the extension first: make && sudo make install" >&2
    exit 1
fi
[[ -f $sharedir/extension/eo_processing.control ]] ||
    die "$sharedir/extension/eo_processing.control is missing: run make install"
for prog in initdb pg_ctl postgres psql pgbench; do
    [[ -x $bindir/$prog ]] || die "$bindir/$prog not found"
done

workloads=(w1_business w2_handwritten w3_eo_process w4_eo_process_seq)
declare -A wl_label=(
    [w1_business]="business txn alone"
    [w2_handwritten]="+ hand-written dedup"
    [w3_eo_process]="+ eo.process"
    [w4_eo_process_seq]="+ eo.process_seq"
)
for w in "${workloads[@]}"; do
    [[ -f $script_dir/$w.pgbench ]] || die "missing $script_dir/$w.pgbench"
done
for f in setup.sql reset.sql sizes.sql; do
    [[ -f $script_dir/$f ]] || die "missing $script_dir/$f"
done

# ------------------------------------------------------- who runs the server
if (( EUID == 0 )); then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the server"
    command -v runuser >/dev/null 2>&1 || die "running as root needs runuser"
    as_pg() { runuser -u postgres -- env HOME="$tmp" "$@"; }
    tmp_base=${BENCH_TMPDIR:-/tmp}
else
    as_pg() { "$@"; }
    tmp_base=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
fi

# Keep the caller's libpq settings away from our cluster.
unset PGSERVICE PGSERVICEFILE PGOPTIONS PGPASSWORD PGPASSFILE PGSSLMODE \
      PGHOSTADDR PGTARGETSESSIONATTRS PGREQUIRESSL PGCONNECT_TIMEOUT PGAPPNAME \
      PGDATA PGTZ PGCLIENTENCODING 2>/dev/null || true

tmp=$(mktemp -d "$tmp_base/eo_inbox_bench.XXXXXX") || die "mktemp failed"
started=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if (( started )); then
        (cd "$tmp" && as_pg "$bindir/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null 2>&1) || true
    fi
    rm -rf -- "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

chmod 700 "$tmp"
(( EUID == 0 )) && chown postgres: "$tmp"
cd "$tmp"                       # a directory the server user can enter
mkdir "$tmp/scripts" "$tmp/logs"
for f in "${workloads[@]}"; do cp "$script_dir/$f.pgbench" "$tmp/scripts/"; done
cp "$script_dir"/setup.sql "$script_dir"/reset.sql "$script_dir"/sizes.sql "$tmp/scripts/"
(( EUID == 0 )) && chown -R postgres: "$tmp/scripts" "$tmp/logs"
# unix socket path must fit in sun_path (107 bytes)
(( ${#tmp} < 80 )) || die "temporary directory path too long for a unix socket: $tmp"

# ---------------------------------------------------------------- the cluster
port_in_use() {
    local p=$1
    [[ -e /tmp/.s.PGSQL.$p || -e /var/run/postgresql/.s.PGSQL.$p ]] && return 0
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Hltn "sport = :$p" 2>/dev/null) ]] && return 0
    fi
    return 1
}
port=""
for _ in $(seq 1 50); do
    p=$(( 20000 + RANDOM % 30000 ))
    if ! port_in_use "$p"; then port=$p; break; fi
done
[[ -n $port ]] || die "no free port found"

echo "initdb in $tmp/data ..." >&2
as_pg "$bindir/initdb" -D "$tmp/data" -U bench -A trust -E UTF8 --locale="$locale" \
    --no-sync >"$tmp/logs/initdb.log" 2>&1 || { cat "$tmp/logs/initdb.log" >&2; die "initdb failed"; }

{
    echo "# --- inbox_bench.sh"
    echo "port = $port"
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$tmp'"
    echo "shared_preload_libraries = 'eo_processing'"
    echo "shared_buffers = 256MB"
    # no checkpoint in the middle of a run: each run starts after CHECKPOINT
    echo "max_wal_size = 8GB"
    echo "checkpoint_timeout = 30min"
    [[ -n $sync_commit ]] && echo "synchronous_commit = $sync_commit"
    true
} >>"$tmp/data/postgresql.conf"

# Which build is measured: the server maps the library once, at start
# (shared_preload_libraries), so a later "make install" does not change
# what this run measures; it is reported at the end if it happens.
so_fingerprint() {
    local f="$pkglibdir/eo_processing.so"
    echo "sha256 $(sha256sum "$f" 2>/dev/null | cut -c1-12), installed $(date -r "$f" '+%Y-%m-%d %H:%M:%S' 2>/dev/null)"
}
so_at_start=$(so_fingerprint)
repo_state=$(git -C "$script_dir" log -1 --date=format:'%Y-%m-%d %H:%M' \
    --format='commit %h of %cd' 2>/dev/null || true)
if [[ -n $repo_state ]] && [[ -n $(git -C "$script_dir" status --porcelain --untracked-files=no \
        -- ':/' ':(top,exclude)test/bench' 2>/dev/null) ]]; then
    repo_state+=" (+ uncommitted changes)"
fi

export PGHOST="$tmp" PGPORT="$port" PGUSER=bench PGDATABASE=postgres
as_pg "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/logs/server.log" -w -t 60 start >/dev/null 2>&1 ||
    { tail -n 30 "$tmp/logs/server.log" >&2 || true; die "server did not start"; }
started=1
pm_pid=$(head -n 1 "$tmp/data/postmaster.pid")

psql_q() { as_pg "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

psql_q -f "$tmp/scripts/setup.sql" >"$tmp/logs/setup.log" 2>&1 ||
    { cat "$tmp/logs/setup.log" >&2; die "setup failed"; }

# ------------------------------------------------------------ machine report
results_dir="$script_dir/results"
stamp=$(date +%Y%m%d-%H%M%S)
mkdir -p "$results_dir" 2>/dev/null || true
result_file="$results_dir/inbox-$stamp.md"
if ! touch "$result_file" 2>/dev/null; then
    echo "inbox_bench: cannot write $result_file; results go to stdout only" >&2
    result_file=/dev/null
fi
out() { printf '%s\n' "$*" | tee -a "$result_file"; }

mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
server_version=$(psql_q -At -c "SELECT version()")
eo_version=$(psql_q -At -c "SELECT extversion FROM pg_extension WHERE extname = 'eo_processing'")
fs=$(df -PT "$tmp" 2>/dev/null | awk 'NR==2 {print $2 " on " $1}')

out "# eo_processing inbox benchmark ($stamp)"
out ""
out "| machine | |"
out "|---|---|"
out "| host | $(uname -n) ($(uname -sr)) |"
out "| CPU | ${cpu_model:-unknown}, nproc = $(nproc) |"
out "| memory | $(( mem_kb / 1024 )) MiB |"
out "| PostgreSQL | $server_version |"
out "| eo_processing | $eo_version: $pkglibdir/eo_processing.so, $so_at_start |"
[[ -n $repo_state ]] && out "| source tree | $repo_state (the installed library may come from another state) |"
out "| data directory | $tmp/data ($fs) |"
sync_value=$(psql_q -At -c 'SHOW synchronous_commit')
echo "synchronous_commit = $sync_value ($sync_label)" >&2
out "| synchronous_commit | **$sync_value** ($sync_label) |"
out "| shared_buffers | $(psql_q -At -c 'SHOW shared_buffers') |"
out "| other settings | max_wal_size=8GB, checkpoint_timeout=30min, locale $locale; CHECKPOINT + TRUNCATE before every run |"
out "| load average at start | $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null) (other work on the machine disturbs TPS) |"
out "| pgbench | -M prepared -n, -T $seconds s per run, -j min(clients, 2), $rounds round(s), warmup ${warmup}s per workload |"
out ""

# ------------------------------------------------------------------- running
declare -A tps_runs         # "$w,$c" -> space-separated TPS of every round
declare -A cpu_runs         # "$w,$c" -> server CPU microseconds per transaction
declare -A wal_runs         # "$w,$c" -> WAL bytes per transaction
raw_rows=()
run_no=0

# Server CPU time: when a backend exits, the postmaster reaps it and the
# kernel adds the backend's user+system time to the postmaster's cutime and
# cstime.  The difference across a pgbench run (whose backends all exit at
# its end) is the CPU the server spent on that run, whatever else runs on
# the machine: a measure that other load disturbs much less than TPS.
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
reaped_cpu_ticks() {        # -> cutime + cstime of the postmaster
    awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$pm_pid/stat" 2>/dev/null || echo 0
}
wait_backends_reaped() {    # until no client backend (live or zombie) is left
    local i
    for (( i = 0; i < 100; i++ )); do
        ps -o stat=,args= --ppid "$pm_pid" 2>/dev/null |
            grep -Eq '^Z|\[local\]' || return 0
        sleep 0.05
    done
}

run_pgbench() {             # workload clients seconds -> TPS LAT FAILED XACTS CPU_US WAL_B
    local w=$1 c=$2 secs=$3 j log cpu0 cpu1 lsn0 wal_bytes
    j=$(( c < 2 ? c : 2 ))
    run_no=$(( run_no + 1 ))
    log="$tmp/logs/run-$run_no-$w-c$c.log"
    psql_q -f "$tmp/scripts/reset.sql" >"$log" 2>&1 || { cat "$log" >&2; die "reset failed"; }
    lsn0=$(psql_q -At -c "SELECT pg_current_wal_lsn()")
    wait_backends_reaped
    cpu0=$(reaped_cpu_ticks)
    if ! as_pg "$bindir/pgbench" -n -M prepared -c "$c" -j "$j" -T "$secs" \
            -D n=0 -D run="$run_no" -f "$tmp/scripts/$w.pgbench" >>"$log" 2>&1; then
        cat "$log" >&2
        die "pgbench failed ($w, $c clients)"
    fi
    wait_backends_reaped
    cpu1=$(reaped_cpu_ticks)
    wal_bytes=$(psql_q -At -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')")
    TPS=$(awk '/^tps = / {print $3; exit}' "$log")
    LAT=$(awk '/^latency average = / {print $4; exit}' "$log")
    XACTS=$(awk -F': ' '/^number of transactions actually processed/ {print $2; exit}' "$log")
    FAILED=$(awk '/^number of failed transactions/ {print $5; exit}' "$log")
    [[ -n $TPS ]] || { cat "$log" >&2; die "could not read TPS from pgbench output"; }
    [[ -z $FAILED || $FAILED == 0 ]] || { cat "$log" >&2; die "$w had failed transactions"; }
    CPU_US=$(awk -v t=$(( cpu1 - cpu0 )) -v hz="$clk_tck" -v x="$XACTS" \
        'BEGIN { if (x > 0) printf "%.1f", t / hz * 1e6 / x; else print 0 }')
    WAL_B=$(awk -v b="$wal_bytes" -v x="$XACTS" 'BEGIN { if (x > 0) printf "%.0f", b / x; else print 0 }')
}

# Sanity: every workload does what it claims (all ids new, every seq new).
check_counts() {            # workload clients -> dies if a txn's row is missing
    local w=$1 c=$2 got expected=$XACTS
    case $w in
        w2_handwritten) got=$(psql_q -At -c "SELECT count(*) FROM processed") ;;
        w3_eo_process) got=$(psql_q -At -c "SELECT count(*) FROM eo.inbox") ;;
        w4_eo_process_seq) got=$(psql_q -At -c "SELECT sum(last_seq) FROM eo.producer_seq") ;;
        *) got=$(psql_q -At -c "SELECT count(*) FROM ledger") ;;
    esac
    # at the end of -T, a client's last transaction may have committed
    # without being counted: allow at most one per client
    if (( got < expected || got > expected + c )); then
        die "$w: $got rows recorded for $expected transactions"
    fi
}

echo "warmup (${warmup}s per workload, 2 clients) ..." >&2
for w in "${workloads[@]}"; do
    run_pgbench "$w" 2 "$warmup"
done

total_runs=$(( rounds * $(wc -w <<<"$clients_list") * ${#workloads[@]} ))
eta=$(( total_runs * (seconds + 1) ))
echo "measuring: $total_runs runs of ${seconds}s (about $(( eta / 60 ))m$(( eta % 60 ))s) ..." >&2
k=0
for (( r = 1; r <= rounds; r++ )); do
    for c in $clients_list; do
        # all four workloads back to back at each client count, starting with
        # a different one each time so that no workload always runs first
        n=${#workloads[@]}
        for (( i = 0; i < n; i++ )); do
            w=${workloads[$(( (i + k) % n ))]}
            run_pgbench "$w" "$c" "$seconds"
            check_counts "$w" "$c"
            tps_runs["$w,$c"]+="$TPS "
            cpu_runs["$w,$c"]+="$CPU_US "
            wal_runs["$w,$c"]+="$WAL_B "
            raw_rows+=("| $r | $c | ${wl_label[$w]} | $TPS | $LAT | $XACTS | ${FAILED:-0} | $CPU_US | $WAL_B |")
            printf '  round %d, %d client(s), %-22s %10.1f tps  %7s ms  %7s us server CPU/txn\n' \
                "$r" "$c" "${wl_label[$w]}" "$TPS" "$LAT" "$CPU_US" >&2
        done
        k=$(( k + 1 ))
    done
done

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {
    if (NR == 0) print 0; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
fmt1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }
diff1() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", a - b }'; }

out "## TPS (synchronous_commit = $sync_value)"
out ""
[[ $rounds -gt 1 ]] && { out "Median of $rounds rounds."; out ""; }
out "| clients | business txn alone | + hand-written dedup | + eo.process | + eo.process_seq | eo.process / hand-written | process_seq / hand-written | hand-written / alone |"
out "|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $clients_list; do
    t1=$(median <<<"${tps_runs[w1_business,$c]}")
    t2=$(median <<<"${tps_runs[w2_handwritten,$c]}")
    t3=$(median <<<"${tps_runs[w3_eo_process,$c]}")
    t4=$(median <<<"${tps_runs[w4_eo_process_seq,$c]}")
    out "| $c | $(fmt "$t1") | $(fmt "$t2") | $(fmt "$t3") | $(fmt "$t4") | $(ratio "$t3" "$t2") | $(ratio "$t4" "$t2") | $(ratio "$t2" "$t1") |"
done
out ""
out "Each transaction is 4 (alone) or 5 statements, one round trip each; at 1 client"
out "TPS mostly measures that latency.  Compare the ratios with the spread of the raw"
out "runs in the results file; on a shared or virtual machine use BENCH_ROUNDS=3."
out ""
out "## Server CPU per transaction (µs, all backends, user + system)"
out ""
out "Less sensitive than TPS to other load on the machine; includes the backend's"
out "share of network and WAL-flush system calls."
out ""
out "| clients | business txn alone | + hand-written dedup | + eo.process | + eo.process_seq | eo.process − hand-written | process_seq − hand-written |"
out "|---:|---:|---:|---:|---:|---:|---:|"
for c in $clients_list; do
    u1=$(median <<<"${cpu_runs[w1_business,$c]}")
    u2=$(median <<<"${cpu_runs[w2_handwritten,$c]}")
    u3=$(median <<<"${cpu_runs[w3_eo_process,$c]}")
    u4=$(median <<<"${cpu_runs[w4_eo_process_seq,$c]}")
    out "| $c | $(fmt1 "$u1") | $(fmt1 "$u2") | $(fmt1 "$u3") | $(fmt1 "$u4") | $(diff1 "$u3" "$u2") | $(diff1 "$u4" "$u2") |"
done
out ""
out "## WAL bytes per transaction (first change of a page after each run's CHECKPOINT writes a full-page image)"
out ""
out "| clients | business txn alone | + hand-written dedup | + eo.process | + eo.process_seq |"
out "|---:|---:|---:|---:|---:|"
for c in $clients_list; do
    row="| $c |"
    for w in "${workloads[@]}"; do
        row+=" $(fmt "$(median <<<"${wal_runs[$w,$c]}")") |"
    done
    out "$row"
done
out ""

# ------------------------------------------------------------------ storage
echo "storage: $size_ids ids into a hand-written table and into eo.inbox ..." >&2
sizes=$(psql_q -At -F'|' -v nids="$size_ids" -f "$tmp/scripts/sizes.sql" 2>"$tmp/logs/sizes.err") ||
    { cat "$tmp/logs/sizes.err" >&2; die "storage measurement failed"; }
check=$(grep '^check|' <<<"$sizes")
IFS='|' read -r _ first total _ <<<"$check"
[[ $first == "$total" ]] || die "eo.process returned true for $first of $total distinct ids"

out "## Storage per remembered id ($size_ids uuid-text ids, 36 chars, after VACUUM ANALYZE)"
out ""
out "| table | rows | heap bytes | index bytes | total bytes | bytes per id | bulk insert, one statement |"
out "|---|---:|---:|---:|---:|---:|---:|"
while IFS='|' read -r name rows heap idx total per ms; do
    [[ $name == check ]] && continue
    out "| $name | $rows | $heap | $idx | $total | $per | $ms ms |"
done <<<"$sizes"
out ""
out "Hand-written: msg_id text PRIMARY KEY, processed_at timestamptz."
out "eo.inbox: expires_at, processed_at, consumer, msg_id, result; PRIMARY KEY (msg_id, consumer)."
out "Bulk insert = all ids in one statement (INSERT ... SELECT ... ON CONFLICT DO NOTHING"
out "vs SELECT eo.process(id) FROM ...), not the one-message-per-transaction path above."
out ""

out "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)."
if [[ $(so_fingerprint | cut -d, -f1) != "${so_at_start%%,*}" ]]; then
    out ""
    out "Note: eo_processing.so was reinstalled during this run ($(so_fingerprint)); the"
    out "server kept the library it loaded at start ($so_at_start)."
fi
out ""

# ---------------------------------------------------------------- raw runs
if [[ $result_file != /dev/null ]]; then
    {
        echo "## Raw runs (in execution order)"
        echo ""
        echo "| round | clients | workload | tps | latency avg ms | transactions | failed | server CPU µs/txn | WAL bytes/txn |"
        echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        printf '%s\n' "${raw_rows[@]}"
        echo ""
    } >>"$result_file"
    echo "results written to $result_file" >&2
fi
