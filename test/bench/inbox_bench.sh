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
#   PG_CONFIG=pg_config     which PostgreSQL installation to use (default:
#                           $EO_PG_BINDIR/pg_config if EO_PG_BINDIR is set)
#
# The cluster is created with locale C so that the hand-written table's
# text key compares with memcmp like eo.inbox's (COLLATE "C"); with e.g.
# BENCH_LOCALE=en_US.UTF-8 the hand-written table pays for strcoll().
#
# Results go to stdout and to test/bench/results/inbox-<timestamp>.md.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=inbox_bench
client_backend_re='\[local\]'     # ps line of a client backend (wait_backends_reaped)
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

# ------------------------------------------------------------------ settings
seconds=${BENCH_SECONDS:-15}
sync_commit=${BENCH_SYNC_COMMIT:-}
clients_list=${BENCH_CLIENTS:-"1 2 8"}
rounds=${BENCH_ROUNDS:-1}
size_ids=${BENCH_SIZE_IDS:-100000}
locale=${BENCH_LOCALE:-C}
pg_config=$(default_pg_config)

[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
[[ $size_ids =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_IDS must be a positive integer"
check_clients_list
check_sync_commit
check_installation

workloads=(w1_business w2_handwritten w3_eo_process w4_eo_process_seq)
declare -A wl_label=(
    [w1_business]="business txn alone"
    [w2_handwritten]="+ hand-written dedup"
    [w3_eo_process]="+ eo.process"
    [w4_eo_process_seq]="+ eo.process_seq"
)
sql_files=(setup.sql business_schema.sql reset.sql sizes.sql)
require_files "${workloads[@]/%/.pgbench}" "${sql_files[@]}"

# ------------------------------------------------------- who runs the server
setup_server_user
make_tmp
prepare_tmp "" "${workloads[@]/%/.pgbench}" "${sql_files[@]}"

# ---------------------------------------------------------------- the cluster
pick_port
run_initdb

server_conf eo_processing >>"$tmp/data/postgresql.conf"

record_build                    # which build is measured
start_server
run_setup setup.sql

# ------------------------------------------------------------ machine report
open_result_file inbox
report_machine_head inbox
report_machine_server
out "| other settings | max_wal_size=8GB, checkpoint_timeout=30min, locale $locale; CHECKPOINT + TRUNCATE before every run |"
out "| load average at start | $(loadavg) (other work on the machine disturbs TPS) |"
out "| pgbench | -M prepared -n, -T $seconds s per run, -j min(clients, 2), $rounds round(s), warmup ${warmup}s per workload |"
out ""

# ------------------------------------------------------------------- running
declare -A tps_runs         # "$w,$c" -> space-separated TPS of every round
declare -A cpu_runs         # "$w,$c" -> server CPU microseconds per transaction
declare -A wal_runs         # "$w,$c" -> WAL bytes per transaction

# Server CPU per transaction: see measure_pgbench in bench_lib.sh.
run_pgbench() {             # workload clients seconds -> TPS LAT FAILED XACTS CPU_US WAL_B
    local w=$1 c=$2 secs=$3 lsn0 wal_bytes
    next_run_log "$w" "$c"
    psql_q -f "$tmp/scripts/reset.sql" >"$PGB_LOG" 2>&1 || { cat "$PGB_LOG" >&2; die "reset failed"; }
    lsn0=$(psql_q -At -c "SELECT pg_current_wal_lsn()")
    measure_pgbench "$w" "$c" "$secs" -D run="$run_no"
    wal_bytes=$(psql_q -At -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')")
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

report_end

# ---------------------------------------------------------------- raw runs
if [[ $result_file != /dev/null ]]; then
    append_raw_runs \
        "| round | clients | workload | tps | latency avg ms | transactions | failed | server CPU µs/txn | WAL bytes/txn |" \
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    echo "results written to $result_file" >&2
fi
