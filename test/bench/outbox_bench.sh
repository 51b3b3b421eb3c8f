#!/usr/bin/env bash
# A_count, A_first, ...: assigned by listener_analyze() through printf -v
# shellcheck disable=SC2154
#
# outbox_bench.sh: what does the transactional outbox (eo.publish + the
# relay) cost, and how fast does the relay deliver?  Measures, with pgbench
# and a LISTEN client (outbox_listener.py), in one throwaway cluster:
#
#   1. Publish overhead, relay disabled (only the cost of publishing):
#        business txn alone          UPDATE accounts + INSERT ledger
#        + hand-written outbox       ... + INSERT INTO my_outbox(topic, payload)
#        + eo.publish                ... + SELECT eo.publish('bench.order', ...)
#      at 1, 2 and 8 clients; target eo.publish / hand-written >= 0.95.
#   2. Application TPS with delivery, 8 clients, a LISTEN client connected:
#        + eo.publish, the relay delivering every message as a NOTIFY
#        + pg_notify('bench', ...) in the transaction itself
#      target eo.publish / pg_notify >= 2.
#   3. Relay drain rate: a backlog of 100,000 messages published with the
#      relay disabled, then the relay enabled: messages/s until eo.outbox is
#      empty (routed/s) and until the listener has them all (received/s);
#      target >= 20,000/s.
#   4. Latency at a steady 1,000 messages/s (pgbench --rate): publish ->
#      LISTEN receive (the envelope's published_at) and client commit
#      acknowledgement -> receive (pgbench's per-transaction log): p50, p99,
#      max; target p99 < 10 ms.
#
# Usage (one command, as root or as a normal user; the extension must be
# built and installed with "make install"; the listener needs python3 with
# psycopg2: Debian package python3-psycopg2):
#
#   test/bench/outbox_bench.sh
#
# Environment:
#   BENCH_SECONDS=15          duration of each measured run (3 = quick mode)
#   BENCH_SYNC_COMMIT=off     run with synchronous_commit=off (CPU-bound);
#                             default: the server default (on)
#   BENCH_CLIENTS="1 2 8"     client counts of part 1
#   BENCH_NOTIFY_CLIENTS=8    clients of part 2
#   BENCH_ROUNDS=1            repeat parts 1 and 2; the median TPS is reported
#   BENCH_PARTS="1 2 3 4"     which parts to run
#   BENCH_DRAIN_MESSAGES=100000  backlog of part 3
#   BENCH_LATENCY_RATE=1000   messages/s of part 4
#   BENCH_LATENCY_CLIENTS=4   pgbench clients of part 4
#   BENCH_PERF=1              also record "perf record -g" of the relay worker
#                             during parts 2 (eo.publish), 3 and 4, and of the
#                             pgbench backends in parts 1 (fewest and most
#                             clients) and 2; reports go to the results
#                             directory (needs perf, and root; not for
#                             timing: perf slows what it records), and
#                             preload pg_stat_statements (track = all) to
#                             list the relay's costliest statements
#   BENCH_PYTHON=/usr/bin/python3  interpreter of the listener
#   BENCH_LOCALE=C            locale of the throwaway cluster
#   PG_CONFIG=pg_config       which PostgreSQL installation to use (default:
#                             $EO_PG_BINDIR/pg_config if EO_PG_BINDIR is set)
#   BENCH_NOTE="..."          a line for the machine table (e.g. which build)
#
# Results go to stdout and to test/bench/results/outbox-<timestamp>.md
# (raw runs and listener statistics are appended there).

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=outbox_bench
# ps line of a pgbench backend; the listener's (role bench_listener) is not one
client_backend_re=': bench postgres \[local\]'
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

# ------------------------------------------------------------------ settings
seconds=${BENCH_SECONDS:-15}
sync_commit=${BENCH_SYNC_COMMIT:-}
clients_list=${BENCH_CLIENTS:-"1 2 8"}
notify_clients=${BENCH_NOTIFY_CLIENTS:-8}
rounds=${BENCH_ROUNDS:-1}
drain_n=${BENCH_DRAIN_MESSAGES:-100000}
lat_rate=${BENCH_LATENCY_RATE:-1000}
lat_clients=${BENCH_LATENCY_CLIENTS:-4}
do_perf=${BENCH_PERF:-0}
parts=${BENCH_PARTS:-"1 2 3 4"}
python=${BENCH_PYTHON:-/usr/bin/python3}
locale=${BENCH_LOCALE:-C}
pg_config=$(default_pg_config)

for v in seconds rounds drain_n lat_rate lat_clients notify_clients; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v (BENCH_*) must be a positive integer"
done
check_clients_list
for p in $parts; do
    [[ $p =~ ^[1-4]$ ]] || die "BENCH_PARTS must be a list of 1, 2, 3, 4"
done
check_sync_commit
check_installation
"$python" -c 'import psycopg2' 2>/dev/null ||
    die "$python cannot import psycopg2: install python3-psycopg2 (or set BENCH_PYTHON)"
check_perf

workloads=(outbox_w1_business outbox_w2_handwritten outbox_w3_publish outbox_w4_pg_notify)
declare -A wl_label=(
    [outbox_w1_business]="business txn alone"
    [outbox_w2_handwritten]="+ hand-written outbox"
    [outbox_w3_publish]="+ eo.publish"
    [outbox_w4_pg_notify]="+ pg_notify"
)
other_files=(outbox_setup.sql business_schema.sql outbox_reset.sql outbox_listener.py)
require_files "${workloads[@]/%/.pgbench}" "${other_files[@]}"

# ------------------------------------------------------- who runs the server
setup_server_user
# cleanup (bench_lib.sh), before it stops the server: stop perf and the listener
cleanup_before_stop() {
    perf_stop
    stop_listener
}
# cleanup, once the server is stopped: keep the server log of a failed run
cleanup_after_stop() {
    local rc=$1
    if (( rc != 0 )) && [[ -s $tmp/logs/server.log && -d $script_dir/results ]]; then
        if cp "$tmp/logs/server.log" "$script_dir/results/outbox-${stamp:-failed}-server.log" 2>/dev/null; then
            echo "outbox_bench: server log kept in test/bench/results/outbox-${stamp:-failed}-server.log" >&2
        fi
    fi
}
make_tmp
prepare_tmp run "${workloads[@]/%/.pgbench}" "${other_files[@]}"

# ---------------------------------------------------------------- the cluster
pick_port
run_initdb

{
    server_conf_eo
    echo "timezone = 'UTC'"
} >>"$tmp/data/postgresql.conf"

record_build                    # which build is measured
dsn="host=$tmp port=$port user=bench dbname=postgres"
# The listener connects as its own role, so that its backend (alive during
# the runs) is told apart from pgbench's in "ps" (wait_backends_reaped).
listen_dsn="host=$tmp port=$port user=bench_listener dbname=postgres"
start_server
perf_after_start
run_setup outbox_setup.sql
perf_after_setup

# ----------------------------------------------------------- relay helpers
wait_outbox_empty() {       # timeout_s -> seconds waited (fractional), dies on timeout
    local limit=$1 t0 n
    t0=$(date +%s.%N)
    while :; do
        n=$(sql1 "SELECT count(*) FROM eo.outbox")
        (( n == 0 )) && break
        if awk -v a="$t0" -v b="$(date +%s.%N)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            die "eo.outbox still holds $n messages after ${limit}s (see $tmp/logs/server.log)"
        fi
        sleep 0.1
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'
}

# ------------------------------------------------------------ perf helpers
perf_backends_start() {     # name: once pgbench has connected, record its backends
    local name=$1 f
    [[ $do_perf == 1 ]] || return 0
    f="$tmp/run/perf-$name.data"
    (
        pids=""
        for (( i = 0; i < 100; i++ )); do
            sleep 0.1
            pids=$(ps -o pid=,args= --ppid "$pm_pid" 2>/dev/null |
                awk '/: bench postgres \[local\]/ {print $1}' | paste -sd, -)
            [[ -n $pids ]] && break
        done
        sleep 0.2   # all clients connected
        pids=$(ps -o pid=,args= --ppid "$pm_pid" 2>/dev/null |
            awk '/: bench postgres \[local\]/ {print $1}' | paste -sd, -)
        [[ -n $pids ]] && exec perf record -g -o "$f" -p "$pids" >"$tmp/logs/perf-$name.log" 2>&1
    ) &
    perf_pids+=($!)
    PERF_FILES+=("$name")
}

# ------------------------------------------------------------ machine report
open_result_file outbox
raw() { [[ $result_file == /dev/null ]] || printf '%s\n' "$*" >>"$result_file"; }

py_version=$("$python" -c 'import sys, psycopg2; print("Python %d.%d.%d, psycopg2 %s" % (sys.version_info[:3] + (psycopg2.__version__.split()[0],)))')

report_machine_head outbox
[[ -n ${BENCH_NOTE:-} ]] && out "| note | $BENCH_NOTE |"
report_machine_server
out "| relay | eo.relay_batch_size = $(sql1 'SHOW eo.relay_batch_size'), destination kind notify (channel bench), subscription bench.* |"
out "| listener | $py_version, LISTEN over the unix socket, one process |"
out "| other settings | max_wal_size=8GB, checkpoint_timeout=30min, locale $locale; CHECKPOINT + TRUNCATE before every run |"
out "| load average at start | $(loadavg) (other work on the machine disturbs TPS; later load averages include this benchmark's own processes) |"
out "| pgbench | -M prepared -n, -T $seconds s per run, -j min(clients, 2), $rounds round(s), warmup ${warmup}s per workload |"
out ""

# ------------------------------------------------------------------- running
# Server CPU of client backends: see measure_pgbench in bench_lib.sh.
run_pgbench() {             # workload clients seconds [pgbench args...] -> TPS LAT XACTS FAILED CPU_US PGB_LOG
    next_run_log "$1" "$2"
    measure_pgbench "$@"
}
reset_tables() {
    psql_q -f "$tmp/scripts/outbox_reset.sql" >>"$tmp/logs/reset.log" 2>&1 ||
        { cat "$tmp/logs/reset.log" >&2; die "reset failed"; }
}
# pgbench -T may count a transaction it did not finish reporting: allow no
# more difference than the number of clients.
check_near() {              # what got expected clients
    (( $2 >= $3 - $4 && $2 <= $3 + $4 )) || die "$1: $2 rows for $3 transactions"
}

ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
verdict() { if ge "$1" "$2"; then echo "met"; else echo "**missed**"; fi; }
now_s() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

has_part() { [[ " $parts " == *" $1 "* ]]; }
relay_on() {                # enable the relay and find its worker (rpid)
    set_relay on
    rpid=$(relay_pid) || die "no relay worker is running"
}

# ============================================================ part 1
if has_part 1; then
    p1_workloads=(outbox_w1_business outbox_w2_handwritten outbox_w3_publish)
    declare -A tps_runs cpu_runs
    set_relay off
    echo "part 1: publish overhead, relay disabled; warmup (${warmup}s per workload, 2 clients) ..." >&2
    for w in "${p1_workloads[@]}"; do
        reset_tables
        run_pgbench "$w" 2 "$warmup"
    done
    total_runs=$(( rounds * $(wc -w <<<"$clients_list") * ${#p1_workloads[@]} ))
    echo "part 1: $total_runs runs of ${seconds}s ..." >&2
    load_p1=$(loadavg)
    k=0
    for (( r = 1; r <= rounds; r++ )); do
        for c in $clients_list; do
            n=${#p1_workloads[@]}
            for (( i = 0; i < n; i++ )); do
                w=${p1_workloads[$(( (i + k) % n ))]}
                reset_tables
                [[ $c == "${clients_list%% *}" || $c == "${clients_list##* }" ]] &&
                    [[ $w != outbox_w1_business ]] && perf_backends_start "p1-$w-c$c"
                stmts_reset
                run_pgbench "$w" "$c" "$seconds"
                perf_stop
                [[ $c == "${clients_list##* }" && $w != outbox_w1_business ]] && stmts_save "p1-$w-c$c"
                got=$(sql1 "SELECT count(*) FROM ledger")
                check_near "$w ledger" "$got" "$XACTS" "$c"
                case $w in
                    outbox_w2_handwritten) [[ $(sql1 "SELECT count(*) FROM my_outbox") == "$got" ]] ||
                        die "my_outbox does not hold one row per transaction" ;;
                    outbox_w3_publish) [[ $(sql1 "SELECT count(*) FROM eo.outbox") == "$got" ]] ||
                        die "eo.outbox does not hold one message per transaction (relay disabled)" ;;
                esac
                tps_runs["$w,$c"]+="$TPS "
                cpu_runs["$w,$c"]+="$CPU_US "
                raw_rows+=("| 1 | $r | $c | ${wl_label[$w]} | $TPS | $LAT | $XACTS | $CPU_US | |")
                printf '  round %d, %d client(s), %-22s %10.1f tps  %7s ms  %7s us server CPU/txn\n' \
                    "$r" "$c" "${wl_label[$w]}" "$TPS" "$LAT" "$CPU_US" >&2
            done
            k=$(( k + 1 ))
        done
    done
fi

# ============================================================ part 2
if has_part 2; then
    relay_on
    echo "part 2: application TPS with delivery, $notify_clients clients, a LISTEN client connected ..." >&2
    for w in outbox_w3_publish outbox_w4_pg_notify; do
        reset_tables
        run_pgbench "$w" 2 "$warmup"
        wait_outbox_empty 120 >/dev/null
    done
    declare -A p2_tps p2_cpu p2_relay p2_backlog p2_drain p2_recv p2_p50 p2_p99 p2_max
    load_p2=$(loadavg)
    for (( r = 1; r <= rounds; r++ )); do
        if (( r % 2 )); then order=(outbox_w3_publish outbox_w4_pg_notify)
        else order=(outbox_w4_pg_notify outbox_w3_publish); fi
        for w in "${order[@]}"; do
            reset_tables
            start_listener "p2-$w" 15 $(( seconds + 300 ))
            rc0=$(proc_cpu_ticks "$rpid")
            if [[ $w == outbox_w3_publish ]]; then
                perf_start "p2-relay" -p "$rpid"
            fi
            perf_backends_start "p2-$w"
            stmts_reset
            run_pgbench "$w" "$notify_clients" "$seconds"
            backlog=$(sql1 "SELECT count(*) FROM eo.outbox")
            drain=$(wait_outbox_empty 300)
            perf_stop
            stmts_save "p2-$w"
            rc1=$(proc_cpu_ticks "$rpid")
            got=$(sql1 "SELECT count(*) FROM ledger")
            check_near "$w ledger" "$got" "$XACTS" "$notify_clients"
            if [[ $w == outbox_w3_publish ]]; then
                [[ $(sql1 "SELECT count(*) FROM eo.message_log") == "$got" ]] ||
                    die "eo.message_log does not hold one message per transaction"
            fi
            finish_listener "$got"
            listener_analyze "$L_OUT"
            [[ $A_count == "$got" && $A_distinct == "$got" ]] ||
                echo "  warning: $w: the listener got $A_count notifications ($A_distinct distinct ids) for $got transactions" >&2
            relay_us=$(awk -v t=$(( rc1 - rc0 )) -v hz="$clk_tck" -v x="$got" \
                'BEGIN { if (x > 0) printf "%.1f", t / hz * 1e6 / x; else print 0 }')
            p2_tps[$w]+="$TPS "
            p2_cpu[$w]+="$CPU_US "
            p2_relay[$w]+="$relay_us "
            p2_backlog[$w]+="$backlog "
            p2_drain[$w]+="$drain "
            p2_recv[$w]+="${p2_recv[$w]:+, }$A_count/$got"
            p2_p50[$w]+="${A_pub_p50:-nan} "
            p2_p99[$w]+="${A_pub_p99:-nan} "
            p2_max[$w]+="${A_pub_max:-nan} "
            raw_rows+=("| 2 | $r | $notify_clients | ${wl_label[$w]} | $TPS | $LAT | $XACTS | $CPU_US | received $A_count/$got, relay CPU $relay_us µs/msg, backlog at end $backlog, drained in ${drain}s, publish→receive p50/p99/max ${A_pub_p50:-}/${A_pub_p99:-}/${A_pub_max:-} ms |")
            printf '  round %d, %d clients, %-16s %10.1f tps  %7s us server CPU/txn, received %s/%s, backlog at end %s (drained in %ss), relay %s us/msg\n' \
                "$r" "$notify_clients" "${wl_label[$w]}" "$TPS" "$CPU_US" "$A_count" "$got" "$backlog" "$drain" "$relay_us" >&2
        done
    done
fi

# ============================================================ part 3
if has_part 3; then
    echo "part 3: relay drain of $drain_n messages ..." >&2
    relay_on                # (the worker's pid, for its CPU time)
    reset_tables
    set_relay off
    t0=$(now_s)
    sql1 "SELECT count(eo.publish('bench.drain', jsonb_build_object('i', g, 'pad', repeat('p', 32)))) FROM generate_series(1, $drain_n) AS g" >/dev/null
    publish_s=$(elapsed "$t0" "$(now_s)")
    [[ $(sql1 "SELECT count(*) FROM eo.outbox") == "$drain_n" ]] || die "the backlog was not published"
    psql_q -c "VACUUM ANALYZE eo.outbox" -c "CHECKPOINT" >/dev/null
    start_listener "p3-drain" 15 300
    rc0=$(proc_cpu_ticks "$rpid")
    d0=$(sql1 "SELECT delivered_since_start FROM eo.relay_status WHERE pid = $rpid")
    perf_start "p3-relay" -p "$rpid"
    stmts_reset
    # Enable the relay and poll until the outbox is empty: the relay's own
    # counter (shared memory) first, then one look at the table; the poller
    # holds no snapshot between polls.
    drain_out=$(as_pg "$python" - "$dsn" "$drain_n" "$d0" "$rpid" <<'EOF'
import sys, time, psycopg2, psycopg2.extensions
dsn, n, d0, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = psycopg2.connect(dsn)
c.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
cur = c.cursor()
cur.execute("ALTER SYSTEM SET eo.relay_enabled = on")
t0 = time.time()
cur.execute("SELECT pg_reload_conf()")
t_counted = None
while time.time() - t0 < 300:
    if t_counted is None:
        cur.execute("SELECT delivered_since_start FROM eo.relay_status WHERE pid = %s", (pid,))
        row = cur.fetchone()
        if row and row[0] - d0 >= n:
            t_counted = time.time()
    else:
        cur.execute("SELECT EXISTS (SELECT 1 FROM eo.outbox)")
        if not cur.fetchone()[0]:
            break
    time.sleep(0.01)
t_empty = time.time()
print("%.6f %.6f %.6f" % (t0, t_counted or t_empty, t_empty))
EOF
    ) || die "the drain poller failed"
    perf_stop
    stmts_save "p3-drain"
    read -r d_t0 d_counted d_empty <<<"$drain_out"
    rc1=$(proc_cpu_ticks "$rpid")
    left=$(sql1 "SELECT count(*) FROM eo.outbox")
    (( left == 0 )) || die "eo.outbox still holds $left messages after 300 s"
    finish_listener "$drain_n"
    listener_analyze "$L_OUT"
    routed_s=$(elapsed "$d_t0" "$d_empty")
    received_s=$(elapsed "$d_t0" "$A_last")
    routed_rate=$(awk -v n="$drain_n" -v s="$routed_s" 'BEGIN { printf "%.0f", n / s }')
    received_rate=$(awk -v n="$A_count" -v s="$received_s" 'BEGIN { printf "%.0f", n / s }')
    first_recv_ms=$(awk -v a="$d_t0" -v b="$A_first" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
    drain_relay_us=$(awk -v t=$(( rc1 - rc0 )) -v hz="$clk_tck" -v x="$drain_n" \
        'BEGIN { printf "%.1f", t / hz * 1e6 / x }')
    drain_recv="$A_count/$drain_n ($A_distinct distinct)"
    raw_rows+=("| 3 | 1 | - | drain $drain_n | | | | | published in ${publish_s}s (one statement); routed in ${routed_s}s (relay counter at $(elapsed "$d_t0" "$d_counted")s), last received at ${received_s}s, first at ${first_recv_ms} ms; relay CPU $drain_relay_us µs/msg; listener: $ANALYSIS |")
    printf '  %s messages: routed in %ss (%s/s), received in %ss (%s/s), relay CPU %s us/msg\n' \
        "$drain_n" "$routed_s" "$routed_rate" "$received_s" "$received_rate" "$drain_relay_us" >&2
fi

# ============================================================ part 4
if has_part 4; then
    echo "part 4: latency at $lat_rate messages/s for ${seconds}s ..." >&2
    relay_on
    reset_tables
    start_listener "p4-latency" 15 $(( seconds + 300 ))
    rm -f "$tmp/run/lat".*
    load_p4=$(loadavg)
    perf_start "p4-relay" -p "$rpid"
    stmts_reset
    run_pgbench outbox_w3_publish "$lat_clients" "$seconds" -R "$lat_rate" -l --log-prefix="$tmp/run/lat"
    lat_tps=$TPS
    lag=$(awk '/^rate limit schedule lag: avg/ {print $6; exit}' "$PGB_LOG")
    wait_outbox_empty 120 >/dev/null
    perf_stop
    stmts_save "p4-latency"
    got=$(sql1 "SELECT count(*) FROM ledger")
    finish_listener "$got"
    listener_analyze "$L_OUT" "$tmp/run/lat".*
    lat_recv="$A_count/$got"
    raw_rows+=("| 4 | 1 | $lat_clients | latency, --rate $lat_rate | $TPS | $LAT | $XACTS | $CPU_US | schedule lag avg ${lag:-?} ms; listener: $ANALYSIS |")
    printf '  %s tps; publish->receive p50 %s p99 %s max %s ms; commit ack->receive p50 %s p99 %s max %s ms\n' \
        "$TPS" "${A_pub_p50:-}" "${A_pub_p99:-}" "${A_pub_max:-}" "${A_ack_p50:-}" "${A_ack_p99:-}" "${A_ack_max:-}" >&2
fi

# ============================================================ report
out "## Summary"
out ""
out "| # | measure | result | target | |"
out "|---|---|---:|---:|---|"
if has_part 1; then
    for c in $clients_list; do
        t2=$(median <<<"${tps_runs[outbox_w2_handwritten,$c]}")
        t3=$(median <<<"${tps_runs[outbox_w3_publish,$c]}")
        rt=$(ratio "$t3" "$t2")
        out "| 1 | publish overhead, $c client(s): TPS eo.publish / hand-written INSERT | $rt ($(fmt "$t3") / $(fmt "$t2")) | ≥ 0.95 | $(verdict "$rt" 0.95) |"
    done
fi
if has_part 2; then
    t3=$(median <<<"${p2_tps[outbox_w3_publish]}")
    t4=$(median <<<"${p2_tps[outbox_w4_pg_notify]}")
    rt2=$(ratio "$t3" "$t4")
    out "| 2 | app TPS with delivery, $notify_clients clients: eo.publish + relay / pg_notify in txn | $rt2 ($(fmt "$t3") / $(fmt "$t4")) | ≥ 2 | $(verdict "$rt2" 2) |"
fi
if has_part 3; then
    out "| 3 | relay drain, $drain_n messages: routed/s (outbox empty) | $routed_rate | ≥ 20000 | $(verdict "$routed_rate" 20000) |"
    out "| 3 | relay drain, $drain_n messages: received/s (listener has all) | $received_rate | ≥ 20000 | $(verdict "$received_rate" 20000) |"
fi
if has_part 4; then
    p99ok=$(awk -v x="${A_pub_p99:-1e9}" 'BEGIN { print (x < 10) ? "met" : "**missed**" }')
    out "| 4 | publish → LISTEN latency at $lat_rate msg/s: p50 / p99 / max | ${A_pub_p50:-?} / ${A_pub_p99:-?} / ${A_pub_max:-?} ms | p99 < 10 ms | $p99ok |"
    out "| 4 | client commit ack → LISTEN at $lat_rate msg/s: p50 / p99 / max | ${A_ack_p50:-?} / ${A_ack_p99:-?} / ${A_ack_max:-?} ms | | |"
fi
out ""

if has_part 1; then
    out "## 1. Publish overhead (relay disabled, TPS, synchronous_commit = $sync_value)"
    out ""
    [[ $rounds -gt 1 ]] && { out "Median of $rounds rounds."; out ""; }
    out "| clients | business txn alone | + hand-written outbox INSERT | + eo.publish | eo.publish / hand-written | hand-written / alone | server CPU µs/txn: alone / hand-written / eo.publish |"
    out "|---:|---:|---:|---:|---:|---:|---:|"
    for c in $clients_list; do
        t1=$(median <<<"${tps_runs[outbox_w1_business,$c]}")
        t2=$(median <<<"${tps_runs[outbox_w2_handwritten,$c]}")
        t3=$(median <<<"${tps_runs[outbox_w3_publish,$c]}")
        u1=$(median <<<"${cpu_runs[outbox_w1_business,$c]}")
        u2=$(median <<<"${cpu_runs[outbox_w2_handwritten,$c]}")
        u3=$(median <<<"${cpu_runs[outbox_w3_publish,$c]}")
        out "| $c | $(fmt "$t1") | $(fmt "$t2") | $(fmt "$t3") | $(ratio "$t3" "$t2") | $(ratio "$t2" "$t1") | $(fmt1 "$u1") / $(fmt1 "$u2") / $(fmt1 "$u3") |"
    done
    out ""
    out "Load average when part 1 started: $load_p1.  The relay is disabled (eo.relay_enabled ="
    out "off), so the messages stay in eo.outbox; each run starts from empty tables."
    out "Hand-written: INSERT INTO my_outbox(topic, payload) (bigserial key); both publish"
    out "the same jsonb_build_object payload."
    out ""
fi

if has_part 2; then
    out "## 2. Application TPS with delivery to a LISTEN client ($notify_clients clients)"
    out ""
    out "| workload | TPS | server CPU µs/txn (backends) | relay CPU µs/msg | received by listener | backlog in eo.outbox at end of run | drained after end | publish → receive p50 / p99 / max (ms) |"
    out "|---|---:|---:|---:|---:|---:|---:|---:|"
    for w in outbox_w3_publish outbox_w4_pg_notify; do
        out "| ${wl_label[$w]} | $(fmt "$(median <<<"${p2_tps[$w]}")") | $(fmt1 "$(median <<<"${p2_cpu[$w]}")") | $( [[ $w == outbox_w3_publish ]] && fmt1 "$(median <<<"${p2_relay[$w]}")" || echo "-") | ${p2_recv[$w]} | $( [[ $w == outbox_w3_publish ]] && median <<<"${p2_backlog[$w]}" || echo "-") | $( [[ $w == outbox_w3_publish ]] && echo "$(median <<<"${p2_drain[$w]}") s" || echo "-") | $(median <<<"${p2_p50[$w]}") / $(median <<<"${p2_p99[$w]}") / $(median <<<"${p2_max[$w]}") |"
    done
    out ""
    out "Load average when part 2 started: $load_p2.  pg_notify: the same business"
    out "transaction calls pg_notify('bench', <envelope-like JSON>) before COMMIT; PostgreSQL"
    out "serialises committing notifiers on one lock (held across the commit record's flush)."
    out "The relay commits each batch of notifications in one transaction instead."
    out "Latency here is under saturation (publishing faster than the relay delivers shows"
    out "up as backlog and latency), not the steady-rate latency of part 4."
    out ""
fi

if has_part 3; then
    out "## 3. Relay drain ($drain_n messages published with the relay disabled)"
    out ""
    out "| published (one statement) | routed: eo.outbox empty after | routed/s | received: last notification after | received/s | first notification after | relay CPU µs/msg | received |"
    out "|---:|---:|---:|---:|---:|---:|---:|---:|"
    out "| ${publish_s} s | ${routed_s} s | $routed_rate | ${received_s} s | $received_rate | ${first_recv_ms} ms | $drain_relay_us | $drain_recv |"
    out ""
    out "Times from ALTER SYSTEM SET eo.relay_enabled = on + pg_reload_conf()."
    out ""
fi

if has_part 4; then
    out "## 4. Latency at a steady rate (pgbench -R $lat_rate, $lat_clients clients, ${seconds}s)"
    out ""
    out "| achieved TPS | schedule lag avg | received | publish → receive p50 | p99 | max | commit ack → receive p50 | p99 | max |"
    out "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    out "| $(fmt "$lat_tps") | ${lag:-?} ms | $lat_recv | ${A_pub_p50:-?} ms | ${A_pub_p99:-?} ms | ${A_pub_max:-?} ms | ${A_ack_p50:-?} ms | ${A_ack_p99:-?} ms | ${A_ack_max:-?} ms |"
    out ""
    out "Load average when part 4 started: $load_p4.  publish → receive: the envelope's"
    out "published_at (taken in eo.publish, the last statement before COMMIT, so it includes"
    out "one round trip and the commit's WAL flush) to the listener's receive time."
    out "commit ack → receive: pgbench's end-of-transaction time (per-transaction log) to"
    out "receive; the relay can start only after the commit is visible, so this measures"
    out "the relay's wake-up, its routing transaction (and its WAL flush) and the NOTIFY."
    out ""
fi
report_end

# ---------------------------------------------------------------- raw runs
if [[ $result_file != /dev/null ]]; then
    append_raw_runs \
        "| part | round | clients | workload | tps | latency avg ms | transactions | server CPU µs/txn | notes |" \
        "|---:|---:|---:|---|---:|---:|---:|---:|---|"
    append_perf_reports outbox
    echo "results written to $result_file" >&2
fi
