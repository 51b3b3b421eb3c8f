#!/usr/bin/env bash
# A_count, D_t0, N_distinct, ...: assigned by listener_analyze and parse_kv
# through printf -v
# shellcheck disable=SC2154
#
# relay_bench.sh: how fast, and at what cost, does the relay deliver, for
# the one build of eo_processing installed in a PostgreSQL installation?
# In a throwaway cluster, each group of measurements below runs in a
# database of its own, created for it and dropped after it, so that every
# measurement starts from empty tables and the script needs nothing but the
# extension's public SQL API (eo.publish, eo.create_destination,
# eo.subscribe, the eo.stats and eo.relay_status views, the
# eo.relay_enabled setting): the same script measures any version, which is
# what relay_compare.sh does with two builds.
#
#   http     HTTP drain: BENCH_HTTP_MESSAGES (20,000) messages of about 100
#            bytes, published in BENCH_HTTP_TRANSACTIONS (1) transactions
#            while the relay is off, to an http destination with the
#            default concurrency (16) and a signing secret, pointing at a
#            local nginx that answers 200 (keep-alive); then the relay
#            turned on: msg/s until eo.stats shows delivered_total = the
#            backlog and nothing pending, in flight or retrying (see
#            "Drains" below).  Target >= 25,000 msg/s.  nginx's
#            access log must hold every message.  Beside it, the ceiling:
#            what the same nginx answers to wrk (BENCH_WRK_CONNECTIONS
#            keep-alive connections for BENCH_WRK_SECONDS, requests shaped
#            like the relay's).
#   notify   NOTIFY drain: BENCH_NOTIFY_MESSAGES (200,000) messages
#            published in one statement to a notify destination, one LISTEN
#            client connected (outbox_listener.py): msg/s until eo.stats
#            shows them delivered (target >= 150,000 msg/s), and until the
#            listener has them all.
#   latency  commit -> LISTEN latency at a steady BENCH_LATENCY_RATE (1,000)
#            messages/s, one message per transaction (pgbench --rate with
#            outbox_w3_publish.pgbench from BENCH_LATENCY_CLIENTS clients
#            for BENCH_LATENCY_SECONDS), as in outbox_bench.sh part 4: from
#            the end of each transaction in pgbench's log to its receipt by
#            the listener; p50, p99 (target < 10 ms), max.
#   load     Sustained load: BENCH_LOAD_CLIENTS (8) pgbench clients for
#            BENCH_LOAD_SECONDS (20) as fast as they can, each transaction a
#            business UPDATE plus eo.publish keyed by the account
#            (relay_load.pgbench); once with the relay off, once (in a fresh
#            database) with the relay delivering every message over HTTP to
#            nginx.  TPS off, TPS on, on / off (target >= 0.95); the backlog
#            when the load stops: committed messages not yet delivered
#            (sum(accounts.events) - delivered_total, one snapshot), and
#            that count / the publish rate = seconds of publishing (target
#            <= 2 s); the drain rate from then until eo.stats shows all
#            delivered.  And where the CPU went (load_cpu_budget): the
#            machine's CPU per transaction with the relay off and the idle
#            share of both runs (/proc/stat), the most the relay and the
#            receiver together may spend per message if the application is
#            to keep 0.95 of its TPS, and what the relay worker and nginx
#            did spend per message with the relay on.
#
# Drains are timed from turning eo.relay_enabled on (ALTER SYSTEM +
# pg_reload_conf(), the worker's start included) to the poll that sees
# eo.stats show the destination drained (http_bench.py drain --counter):
# every BENCH_POLL_SECONDS the poller reads the relay's own counter
# (delivered_since_start of eo.relay_status, from shared memory), and reads
# eo.stats, which counts deliveries in tables and costs far more on a busy
# two-CPU machine, only once that counter has reached the backlog (or every
# half second regardless).  The poller's CPU time is recorded.
#
# The cost of the http and notify drains: rows written and WAL bytes per
# delivered message, over the drain only (not the publishing).  Rows: the
# database's tup_inserted + tup_updated + tup_deleted in pg_stat_database,
# read once the counters have stopped moving (the relay reports its table
# statistics at most once a second, after a step, so the script nudges it
# with pg_reload_conf() while it polls, then turns it off, which lets a
# relay that exits when disabled report at exit, and polls again).  WAL:
# pg_current_wal_insert_lsn() after the CHECKPOINT that follows the
# publishing, and again in the poll that sees the backlog delivered (the
# insert position: the relay commits asynchronously, so the written
# position, pg_current_wal_lsn(), may lag behind its last commits).
#
# Usage (as root: nginx and wrk are installed from Debian if missing, and
# the servers run as "postgres"; or as a normal user with both installed;
# the build must be installed, "make install"; the clients need python3
# with psycopg 3 and psycopg2: Debian's python3-psycopg, python3-psycopg2):
#
#   EO_PG_BINDIR=<copy>/usr/lib/postgresql/15/bin test/bench/relay_bench.sh
#   BENCH_QUICK=1 test/bench/relay_bench.sh          # a smoke run, ~1 min
#
# Environment (defaults; BENCH_QUICK=1 changes those marked *):
#   BENCH_RELAY_GROUPS="http notify latency load"   which groups, in order
#   BENCH_HTTP_MESSAGES=20000 *     (quick: 2000) backlog of the http drain
#   BENCH_HTTP_TRANSACTIONS=1       transactions that publish it
#   BENCH_NOTIFY_MESSAGES=200000 *  (quick: 10000) backlog of the notify drain
#   BENCH_LATENCY_RATE=1000         messages/s of the latency group
#   BENCH_LATENCY_SECONDS=15 *      (quick: 3) its duration
#   BENCH_LATENCY_CLIENTS=4         its pgbench clients
#   BENCH_LOAD_CLIENTS=8            pgbench clients of the load group
#   BENCH_LOAD_SECONDS=20 *         (quick: 3) duration of each of its runs
#   BENCH_WRK_SECONDS=3 *           (quick: 1) duration of the wrk ceiling
#   BENCH_WRK_CONNECTIONS=16        its keep-alive connections
#   BENCH_POLL_SECONDS=0.02         how often the drains poll (see Drains)
#   BENCH_NGINX_WORKERS=1           nginx worker processes
#   BENCH_SYNC_COMMIT=off           synchronous_commit of the cluster
#                                   (default: the server default, on)
#   BENCH_KV_OUT=FILE               also append every figure to FILE as
#                                   key=value lines (relay_compare.sh)
#   BENCH_PYTHON=/usr/bin/python3   interpreter of the clients
#   BENCH_LOCALE=C                  locale of the throwaway cluster
#   PG_CONFIG=pg_config             which PostgreSQL installation (default:
#                                   $EO_PG_BINDIR/pg_config if EO_PG_BINDIR
#                                   is set)
#   BENCH_NOTE="..."                a line for the machine table
#
# Results go to stdout and, unless BENCH_KV_OUT is set, to
# test/bench/results/relay-<timestamp>.md.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=relay_bench
# ps line of a pgbench backend (every group's database is m_<group>); the
# listener connects as bench_listener and is not one
client_backend_re=': bench m_[a-z_]+ \[local\]'
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

# ------------------------------------------------------------------ settings
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    d_http=2000 d_notify=10000 d_lat=3 d_load=3 d_wrk=1
else
    d_http=20000 d_notify=200000 d_lat=15 d_load=20 d_wrk=3
fi
groups=${BENCH_RELAY_GROUPS:-"http notify latency load"}
http_n=${BENCH_HTTP_MESSAGES:-$d_http}
http_txns=${BENCH_HTTP_TRANSACTIONS:-1}
notify_n=${BENCH_NOTIFY_MESSAGES:-$d_notify}
lat_rate=${BENCH_LATENCY_RATE:-1000}
lat_seconds=${BENCH_LATENCY_SECONDS:-$d_lat}
lat_clients=${BENCH_LATENCY_CLIENTS:-4}
load_clients=${BENCH_LOAD_CLIENTS:-8}
load_seconds=${BENCH_LOAD_SECONDS:-$d_load}
wrk_seconds=${BENCH_WRK_SECONDS:-$d_wrk}
wrk_conns=${BENCH_WRK_CONNECTIONS:-16}
poll=${BENCH_POLL_SECONDS:-0.02}
nginx_workers=${BENCH_NGINX_WORKERS:-1}
sync_commit=${BENCH_SYNC_COMMIT:-}
kv_out=${BENCH_KV_OUT:-}
python=${BENCH_PYTHON:-/usr/bin/python3}
locale=${BENCH_LOCALE:-C}
pg_config=$(default_pg_config)
seconds=$load_seconds           # (check_sync_commit's warmup; unused here)
do_perf=0                       # (server_conf_eo: no pg_stat_statements)

# Targets
target_http=25000               # msg/s
target_notify=150000            # msg/s
target_p99=10                   # ms, commit -> LISTEN
target_ratio=0.95               # TPS relay on / relay off
target_backlog=2                # seconds of publishing left when the load stops

for v in http_n http_txns notify_n lat_rate lat_seconds lat_clients load_clients \
         load_seconds wrk_seconds wrk_conns nginx_workers; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v (BENCH_*) must be a positive integer"
done
[[ $poll =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_POLL_SECONDS must be a number of seconds"
(( http_n % http_txns == 0 )) || die "BENCH_HTTP_MESSAGES must be a multiple of BENCH_HTTP_TRANSACTIONS"
for g in $groups; do
    [[ $g =~ ^(http|notify|latency|load)$ ]] ||
        die "BENCH_RELAY_GROUPS must be a list of http, notify, latency, load"
done
[[ -n ${groups// /} ]] || die "BENCH_RELAY_GROUPS is empty"
has_group() { [[ " $groups " == *" $1 "* ]]; }
check_sync_commit
check_installation
"$python" -c 'import psycopg, psycopg2' 2>/dev/null ||
    die "$python cannot import psycopg (3) and psycopg2: install python3-psycopg and python3-psycopg2 (or set BENCH_PYTHON)"
files=(relay_setup.sql business_schema.sql relay_load.pgbench outbox_w3_publish.pgbench
       http_bench.py outbox_listener.py)
require_files "${files[@]}"

# nginx (http, load) and wrk (http): bench_lib.sh installs them if missing
if has_group http || has_group load; then
    ensure_nginx
fi
if has_group http; then
    ensure_wrk || die "wrk is not installed: apt-get install wrk (or run as root)"
fi

# ------------------------------------------------------- who runs the server
setup_server_user
# cleanup (bench_lib.sh), before it stops the server
cleanup_before_stop() {
    stop_listener
    stop_nginx
}
make_tmp
prepare_tmp "run nginx nginx/tmp" "${files[@]}"

# ---------------------------------------------------------------- the cluster
pick_port
http_port=$port
pick_port
[[ $port != "$http_port" ]] || pick_port
run_initdb
{
    server_conf_eo
    echo "timezone = 'UTC'"
    echo "eo.relay_enabled = off    # each group turns it on when it measures"
} >>"$tmp/data/postgresql.conf"
record_build
url="http://127.0.0.1:$http_port/hook"
start_server
psql_q -c "CREATE ROLE bench_listener LOGIN" >/dev/null
if has_group http || has_group load; then
    start_nginx "" ""           # (no extra modules or locations)
fi

# ------------------------------------------------------------------- helpers
py() { as_pg "$python" "$tmp/scripts/http_bench.py" "$@"; }

declare -A R                    # the figures, by key
# kv KEY VALUE: records a figure (and appends KEY=VALUE to BENCH_KV_OUT).
kv() {
    R[$1]=$2
    if [[ -n $kv_out ]]; then printf '%s=%s\n' "$1" "$2" >>"$kv_out"; fi
}

# use_db NAME: later psql, pgbench and client connections go to NAME.
use_db() {
    db=$1
    export PGDATABASE=$db
    dsn="host=$tmp port=$port user=bench dbname=$db"
    # The listener connects as its own role: its backend is not a client's.
    listen_dsn="host=$tmp port=$port user=bench_listener dbname=$db"
}
# new_db NAME: creates database NAME with relay_setup.sql and uses it.
new_db() {
    psql_q -d postgres -c "CREATE DATABASE $1" >/dev/null
    use_db "$1"
    psql_q -f "$tmp/scripts/relay_setup.sql" >"$tmp/logs/setup-$1.log" 2>&1 ||
        { cat "$tmp/logs/setup-$1.log" >&2; die "setup of database $1 failed"; }
    [[ -n ${R[eo_version]:-} ]] ||
        kv eo_version "$(sql1 "SELECT extversion FROM pg_extension WHERE extname = 'eo_processing'")"
}
# drop_db: turns the relay off and drops the current database.
drop_db() {
    set_relay off
    psql_q -d postgres -c "DROP DATABASE $db WITH (FORCE)" >/dev/null
    use_db postgres
}

# create_hook: the http destination "hook" to our nginx, signed, with the
# default concurrency, for every bench.* message.
create_hook() {
    psql_q -c "SELECT eo.create_destination('hook', 'http', jsonb_build_object(
                   'url', '$url',
                   'signing_secret', 'whsec_' || encode(sha256('relay_bench'), 'base64')))" \
           -c "SELECT eo.subscribe('bench.*', 'hook')" >/dev/null
}
# create_notify: the notify destination "n" (channel bench) for every
# bench.* message.
create_notify() {
    psql_q -c "SELECT eo.create_destination('n', 'notify', '{\"channel\": \"bench\"}')" \
           -c "SELECT eo.subscribe('bench.*', 'n')" >/dev/null
}

# publish_backlog TOPIC COUNT TRANSACTIONS: COUNT messages of about 100 bytes
# in TRANSACTIONS transactions (one statement each); sets publish_s.
publish_backlog() {
    local t a b per=$(( $2 / $3 )) f="$tmp/run/publish-$db.sql" t0
    : >"$f"
    for (( t = 0; t < $3; t++ )); do
        a=$(( t * per + 1 )); b=$(( (t + 1) * per ))
        echo "SELECT count(eo.publish('$1', jsonb_build_object('i', g, 'pad', repeat('p', 80)))) FROM generate_series($a, $b) AS g;" >>"$f"
    done
    t0=$(now_s)
    psql_q -f "$f" >/dev/null
    publish_s=$(elapsed "$t0" "$(now_s)")
}

# drain DESTINATION COUNT: turns the relay on and polls eo.stats until
# DESTINATION has delivered COUNT messages and has nothing pending, in
# flight or retrying (http_bench.py drain); sets D_t0 (the reload),
# D_t_done (the poll that saw it), D_lsn (the WAL insert position then).
drain() {
    local res
    res=$(py drain --dsn "$dsn" --destination "$1" --expect "$2" --poll "$poll" --counter --timeout 600) ||
        die "the drain poller failed"
    parse_kv D_ "$res"
    [[ $D_done == 1 ]] || die "$db: not drained in 600 s: $res (see $tmp/logs/server.log)"
}

# rows_written: tup_inserted + tup_updated + tup_deleted of this database.
rows_written() {
    sql1 "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = current_database()"
}
# settle_rows: rows_written once it has stopped moving: polled every
# 0.25 s, each time after a pg_reload_conf() (a running relay runs a step
# on a reload, and reports its statistics then if a second has passed),
# until unchanged for 2 s (30 s at most, then a warning).  Prints it.
settle_rows() {
    local last v t0 t_change now
    last=$(rows_written)
    t0=$(now_s); t_change=$t0
    while :; do
        sql1 "SELECT pg_reload_conf()" >/dev/null
        sleep 0.25
        v=$(rows_written)
        now=$(now_s)
        if [[ $v != "$last" ]]; then
            last=$v; t_change=$now
        elif ge "$(elapsed "$t_change" "$now")" 2; then
            break
        fi
        if ge "$(elapsed "$t0" "$now")" 30; then
            echo "  warning: $db: rows written still moving after 30 s" >&2
            break
        fi
    done
    echo "$last"
}

# before_drain: statistics for the planner, a checkpoint (so each drain
# pays its own full-page writes), then the starting rows0 and lsn0.
before_drain() {
    psql_q -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
    rows0=$(settle_rows)
    lsn0=$(sql1 "SELECT pg_current_wal_insert_lsn()")
}
# after_drain PREFIX COUNT: once drain has returned: the rows written and
# WAL per message of the drain of COUNT messages, as PREFIX_rows_per_msg
# and PREFIX_wal_per_msg; leaves the relay off.
after_drain() {
    local rows1 wal
    settle_rows >/dev/null      # the relay still on: nudged to report
    set_relay off
    rows1=$(settle_rows)        # a relay that exits when disabled reports then
    wal=$(sql1 "SELECT pg_wal_lsn_diff('$D_lsn', '$lsn0')")
    kv "${1}_rows_per_msg" "$(awk -v r=$(( rows1 - rows0 )) -v n="$2" 'BEGIN { printf "%.2f", r / n }')"
    kv "${1}_wal_per_msg" "$(awk -v w="$wal" -v n="$2" 'BEGIN { printf "%.0f", w / n }')"
    kv "${1}_rows" "$(( rows1 - rows0 ))"
    kv "${1}_wal_bytes" "$wal"
}

# nginx_lines MARK FILE: the access log's lines after MARK, once settled,
# in FILE, analysed (http_bench.py analyze) into N_lines, N_distinct,
# N_extra, N_non2xx, N_connections, N_first, N_last.
nginx_lines() {
    local res
    log_since "$1" "$2"
    res=$(py analyze --log "$2") || die "analysis of $2 failed"
    parse_kv N_ "$res"
}
# check_received WHAT GOT DISTINCT EXPECTED: warns unless every message
# arrived (once or more).
check_received() {
    if [[ $3 != "$4" ]]; then
        echo "  warning: $1: $3 distinct messages of $4 expected ($2 in all)" >&2
    fi
}
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }'; }

# ============================================================ the groups
group_http() {
    local mark secs
    echo "http: drain of $http_n signed messages (concurrency: the default) ..." >&2
    kv load_http "$(loadavg)"
    new_db m_http
    create_hook
    publish_backlog bench.http "$http_n" "$http_txns"
    before_drain
    mark=$(log_mark)
    drain hook "$http_n"
    after_drain http "$http_n"
    secs=$(elapsed "$D_t0" "$D_t_done")
    nginx_lines "$mark" "$tmp/run/access-http.log"
    check_received "http drain" "$N_lines" "$N_distinct" "$http_n"
    kv http_messages "$http_n"
    kv http_rate "$(rate "$http_n" "$secs")"
    kv http_seconds "$secs"
    kv http_poll_cpu "$D_poll_cpu"
    kv http_publish_seconds "$publish_s"
    kv http_nginx_rate "$(rate "$http_n" "$(elapsed "$D_t0" "$N_last")")"
    kv http_received "$N_distinct/$http_n ($N_lines requests, $N_non2xx non-2xx, $N_connections connections)"
    echo "  ${R[http_rate]} msg/s (${secs} s), nginx: ${R[http_received]}; rows/msg ${R[http_rows_per_msg]}, WAL bytes/msg ${R[http_wal_per_msg]}" >&2
    echo "http: ceiling: wrk, $wrk_conns connections, ${wrk_seconds} s ..." >&2
    wrk_ceiling "$url" "$wrk_seconds" "$wrk_conns"
    kv nginx_version "$nginx_version, $nginx_workers worker process(es)"
    kv wrk_version "$(wrk_version)"
    kv wrk_connections "$wrk_conns"
    kv wrk_rps "$WRK_RPS"
    kv wrk_errors "$WRK_ERRORS"
    echo "  wrk: $WRK_RPS requests/s ($WRK_ERRORS errors)" >&2
    drop_db
}

group_notify() {
    local secs
    echo "notify: drain of $notify_n messages, one LISTEN client ..." >&2
    kv load_notify "$(loadavg)"
    new_db m_notify
    create_notify
    publish_backlog bench.notify "$notify_n" 1
    before_drain
    start_listener notify 15 900
    drain n "$notify_n"
    after_drain notify "$notify_n"
    finish_listener "$notify_n"
    listener_analyze "$L_OUT"
    check_received "notify drain" "$A_count" "$A_distinct" "$notify_n"
    secs=$(elapsed "$D_t0" "$D_t_done")
    kv notify_messages "$notify_n"
    kv notify_rate "$(rate "$notify_n" "$secs")"
    kv notify_seconds "$secs"
    kv notify_poll_cpu "$D_poll_cpu"
    kv notify_publish_seconds "$publish_s"
    kv notify_recv_rate "$(rate "$A_count" "$(elapsed "$D_t0" "$A_last")")"
    kv notify_received "$A_distinct/$notify_n ($A_count notifications)"
    echo "  ${R[notify_rate]} msg/s (${secs} s), received ${R[notify_recv_rate]} msg/s; rows/msg ${R[notify_rows_per_msg]}, WAL bytes/msg ${R[notify_wal_per_msg]}" >&2
    drop_db
}

group_latency() {
    local got lag
    echo "latency: $lat_rate msg/s for ${lat_seconds} s, one LISTEN client ..." >&2
    kv load_latency "$(loadavg)"
    new_db m_latency
    create_notify
    set_relay on
    relay_pid >/dev/null || die "no relay worker started"
    start_listener latency 15 $(( lat_seconds + 300 ))
    rm -f "$tmp/run/lat".*
    next_run_log latency "$lat_clients"
    measure_pgbench outbox_w3_publish "$lat_clients" "$lat_seconds" \
        -R "$lat_rate" -l --log-prefix="$tmp/run/lat"
    lag=$(awk '/^rate limit schedule lag: avg/ { print $6; exit }' "$PGB_LOG")
    got=$(sql1 "SELECT count(*) FROM ledger")
    drain n "$got"
    finish_listener "$got"
    listener_analyze "$L_OUT" "$tmp/run/lat".*
    check_received "latency" "$A_count" "$A_distinct" "$got"
    kv lat_rate "$lat_rate"
    kv lat_tps "$(fmt "$TPS")"
    kv lat_lag_ms "${lag:-?}"
    kv lat_p50 "${A_ack_p50:-nan}"
    kv lat_p99 "${A_ack_p99:-nan}"
    kv lat_max "${A_ack_max:-nan}"
    kv lat_pub_p50 "${A_pub_p50:-nan}"
    kv lat_pub_p99 "${A_pub_p99:-nan}"
    kv lat_received "$A_distinct/$got (${A_ack_matched:-0} matched with pgbench's log)"
    echo "  commit -> LISTEN p50 ${R[lat_p50]}, p99 ${R[lat_p99]}, max ${R[lat_max]} ms at $(fmt "$TPS") tps" >&2
    drop_db
}

# on_pgbench_end (measure_pgbench calls it the moment pgbench returns):
# committed and delivered messages in one snapshot; sets B_t, B_published
# and B_delivered.
backlog_now() {
    B_t=$(now_s)
    read -r B_published B_delivered < <(psql_q -At -F ' ' -c "
        SELECT (SELECT sum(events) FROM accounts),
               (SELECT delivered_total FROM eo.stats WHERE destination = 'hook')")
}

# load_cpu_budget BUSY0 TOTAL0 BUSY1 TOTAL1 XACTS_OFF BUSY2 TOTAL2 BUSY3
# TOTAL3 XACTS_ON RELAY_TICKS NGINX_TICKS: where the machine's CPU went in
# the two load runs (machine_cpu_ticks before and after each), as µs per
# transaction, and what that leaves the relay: with the relay off, the
# application (server, pgbench) used busy_off CPU for x_off transactions
# and left idle_off unused.  To keep 0.95 of its TPS with the relay on, it
# needs 0.95 x busy_off, so the relay and the receiver together may spend
# at most (all CPU - 0.95 x busy_off) / (0.95 x x_off) per message, even
# if they used every idle cycle.  Beside it, what they spent per message
# with the relay on (relay worker and nginx workers, /proc/PID/stat).
load_cpu_budget() {
    local b0=$1 t0=$2 b1=$3 t1=$4 xo=$5 b2=$6 t2=$7 b3=$8 t3=$9 xn=${10} rt=${11} nt=${12}
    kv load_cpu_off "$(awk -v b=$(( b1 - b0 )) -v hz="$clk_tck" -v x="$xo" \
        'BEGIN { printf "%.0f", (x > 0 ? b / hz * 1e6 / x : 0) }')"
    kv load_idle_off "$(awk -v b=$(( b1 - b0 )) -v t=$(( t1 - t0 )) \
        'BEGIN { printf "%.0f", (t > 0 ? 100 * (t - b) / t : 0) }')"
    kv load_idle_on "$(awk -v b=$(( b3 - b2 )) -v t=$(( t3 - t2 )) \
        'BEGIN { printf "%.0f", (t > 0 ? 100 * (t - b) / t : 0) }')"
    kv load_budget "$(awk -v b=$(( b1 - b0 )) -v t=$(( t1 - t0 )) -v hz="$clk_tck" -v x="$xo" \
        'BEGIN { printf "%.0f", (x > 0 ? (t - 0.95 * b) / hz * 1e6 / (0.95 * x) : 0) }')"
    kv load_relay_us "$(awk -v r="$rt" -v hz="$clk_tck" -v x="$xn" \
        'BEGIN { printf "%.0f", (x > 0 ? r / hz * 1e6 / x : 0) }')"
    kv load_nginx_us "$(awk -v n="$nt" -v hz="$clk_tck" -v x="$xn" \
        'BEGIN { printf "%.0f", (x > 0 ? n / hz * 1e6 / x : 0) }')"
}

group_load() {
    local tps_off tps_on backlog mark drain_s m0 m1 m2 m3 rpid r0 r1 n0 n1 x_off x_on
    echo "load: $load_clients clients for ${load_seconds} s, relay off ..." >&2
    kv load_load "$(loadavg)"
    new_db m_load_off
    next_run_log load_off "$load_clients"
    m0=$(machine_cpu_ticks)
    measure_pgbench relay_load "$load_clients" "$load_seconds"
    m1=$(machine_cpu_ticks)
    tps_off=$TPS x_off=$XACTS
    echo "  relay off: $(fmt "$tps_off") tps" >&2
    drop_db

    echo "load: $load_clients clients for ${load_seconds} s, relay on (http) ..." >&2
    new_db m_load_on
    create_hook
    set_relay on
    rpid=$(relay_pid) || die "no relay worker started"
    mark=$(log_mark)
    next_run_log load_on "$load_clients"
    # CPU of the relay worker and nginx while the clients run (read the
    # moment pgbench returns, before the drain).
    on_pgbench_end() { backlog_now; r1=$(proc_cpu_ticks "$rpid"); n1=$(nginx_cpu_ticks); }
    r0=$(proc_cpu_ticks "$rpid") n0=$(nginx_cpu_ticks) m2=$(machine_cpu_ticks)
    measure_pgbench relay_load "$load_clients" "$load_seconds"
    m3=$(machine_cpu_ticks)
    unset -f on_pgbench_end
    tps_on=$TPS x_on=$XACTS
    backlog=$(( B_published - B_delivered ))
    drain hook "$B_published"
    drain_s=$(elapsed "$B_t" "$D_t_done")
    nginx_lines "$mark" "$tmp/run/access-load.log"
    check_received "load" "$N_lines" "$N_distinct" "$B_published"
    kv load_clients "$load_clients"
    kv load_seconds "$load_seconds"
    kv load_tps_off "$(fmt "$tps_off")"
    kv load_tps_on "$(fmt "$tps_on")"
    kv load_ratio "$(ratio "$tps_on" "$tps_off")"
    kv load_published "$B_published"
    kv load_backlog "$backlog"
    kv load_backlog_seconds "$(awk -v b="$backlog" -v r="$tps_on" 'BEGIN { printf "%.2f", (r > 0) ? b / r : 0 }')"
    kv load_drain_seconds "$drain_s"
    if (( backlog > 0 )); then
        kv load_drain_rate "$(rate "$backlog" "$drain_s")"
    else
        kv load_drain_rate "n/a"
    fi
    kv load_received "$N_distinct/$B_published ($N_lines requests, $N_non2xx non-2xx)"
    # shellcheck disable=SC2086  # m0..m3 are "busy total" pairs
    load_cpu_budget $m0 $m1 "$x_off" $m2 $m3 "$x_on" $(( r1 - r0 )) $(( n1 - n0 ))
    echo "  relay on: $(fmt "$tps_on") tps (${R[load_ratio]} of off); backlog $backlog messages = ${R[load_backlog_seconds]} s of publishing, drained in ${drain_s} s" >&2
    drop_db
}

# ============================================================ run
if [[ -z $kv_out ]]; then
    open_result_file relay
else
    stamp=$(date +%Y%m%d-%H%M%S) result_file=/dev/null
fi
kv server_version "$(sql1 "SELECT version()")"
kv so "$(so_fingerprint)"
use_db postgres
for g in $groups; do
    "group_$g"
done

# ============================================================ report
mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null || echo 0)
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
out "# eo_processing relay benchmark ($stamp)"
out ""
out "| machine | |"
out "|---|---|"
out "| CPU | ${cpu_model:-unknown}, nproc = $(nproc) |"
out "| memory | $(( mem_kb / 1024 )) MiB |"
out "| PostgreSQL | ${R[server_version]} |"
out "| eo_processing | ${R[eo_version]:-?}: $pkglibdir/eo_processing.so, ${R[so]} |"
[[ -n $repo_state ]] && out "| scripts from | $repo_state |"
[[ -n ${BENCH_NOTE:-} ]] && out "| note | $BENCH_NOTE |"
out "| synchronous_commit | $(sql1 'SHOW synchronous_commit') |"
[[ -n ${nginx_version:-} ]] && out "| receiver | $nginx_version, $nginx_workers worker process(es), POST /hook -> 200, keep-alive |"
out ""
out "| measure | result | target | |"
out "|---|---:|---:|---|"
if has_group http; then
    out "| http drain, $http_n signed messages, concurrency 16: msg/s | ${R[http_rate]} | ≥ $target_http | $(verdict "${R[http_rate]}" "$target_http") |"
    out "| ceiling: the same nginx under wrk, $wrk_conns connections: requests/s | ${R[wrk_rps]} | | |"
    out "| http drain: rows written / WAL bytes per message | ${R[http_rows_per_msg]} / ${R[http_wal_per_msg]} | | |"
fi
if has_group notify; then
    out "| notify drain, $notify_n messages: msg/s (eo.stats) | ${R[notify_rate]} | ≥ $target_notify | $(verdict "${R[notify_rate]}" "$target_notify") |"
    out "| notify drain: msg/s received by the LISTEN client | ${R[notify_recv_rate]} | | |"
    out "| notify drain: rows written / WAL bytes per message | ${R[notify_rows_per_msg]} / ${R[notify_wal_per_msg]} | | |"
fi
if has_group latency; then
    p99_ok=$(awk -v x="${R[lat_p99]}" -v t="$target_p99" 'BEGIN { print (x + 0 < t && x != "nan") ? "met" : "**missed**" }')
    out "| commit → LISTEN at $lat_rate msg/s: p50 / p99 / max (ms) | ${R[lat_p50]} / ${R[lat_p99]} / ${R[lat_max]} | p99 < $target_p99 | $p99_ok |"
fi
if has_group load; then
    backlog_ok=$(awk -v x="${R[load_backlog_seconds]}" -v t="$target_backlog" 'BEGIN { print (x <= t) ? "met" : "**missed**" }')
    out "| load, $load_clients clients: TPS relay off / on | ${R[load_tps_off]} / ${R[load_tps_on]} | | |"
    out "| load: TPS on ÷ off | ${R[load_ratio]} | ≥ $target_ratio | $(verdict "${R[load_ratio]}" "$target_ratio") |"
    out "| load: backlog when it stops: messages (seconds of publishing) | ${R[load_backlog]} (${R[load_backlog_seconds]} s) | ≤ $target_backlog s | $backlog_ok |"
    out "| load: drain rate afterwards: msg/s | ${R[load_drain_rate]} | | |"
    out "| load: machine CPU per transaction, relay off: µs (idle: off, on) | ${R[load_cpu_off]} (${R[load_idle_off]} %, ${R[load_idle_on]} %) | | |"
    out "| load: the most the relay + receiver may spend per message for ≥ 0.95: µs | ${R[load_budget]} | | |"
    out "| load: relay worker + nginx CPU per message, relay on: µs | ${R[load_relay_us]} + ${R[load_nginx_us]} | | |"
fi
out ""
report_end
if [[ $result_file != /dev/null ]]; then
    echo "results written to $result_file" >&2
fi
