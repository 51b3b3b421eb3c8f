#!/usr/bin/env bash
# A_lines, A_p50, ...: assigned by analyze_log() through printf -v
# shellcheck disable=SC2154
#
# http_bench.sh: how fast does the relay deliver webhooks (destinations of
# kind http, libcurl's multi interface), and how does that compare with the
# outbox poller a user writes by hand?  In one throwaway cluster, against
# one local nginx that answers 200 to every POST /hook:
#
#   1. Drain rate: a backlog of BENCH_HTTP_MESSAGES (20,000) messages,
#      published in BENCH_HTTP_TRANSACTIONS (20) transactions with the
#      relay disabled, then the relay enabled: messages/s until eo.stats
#      shows the destination with nothing pending, in flight or retrying
#      and delivered_total = the backlog (polled every 50 ms), for each
#      concurrency of BENCH_HTTP_CONCURRENCY ("16 64"; 16 is the default).
#      nginx's access log must hold every message once.
#      Target: >= 4,800 msg/s, 20x the ~240 requests/s pg_net reports for
#      its own local benchmark.  The ceiling beside it: what the same nginx
#      answers to wrk (BENCH_WRK_CONNECTIONS keep-alive connections for
#      BENCH_WRK_SECONDS, requests shaped like a signed webhook).
#   2. Latency at a steady BENCH_LATENCY_RATE (500) messages/s for
#      BENCH_LATENCY_SECONDS (20): one message per transaction from
#      BENCH_LATENCY_CLIENTS (4) psycopg 3 connections on one schedule,
#      noting the time each COMMIT returned, matched by message id
#      (webhook-id) with nginx's $msec of the request: p50, p99, max.
#      nginx logs with millisecond resolution (truncated), so each figure
#      is within -1 ms of the true one.
#   3. Baseline: the same backlog in a plain table app_outbox, drained by
#      the relay a user writes by hand (http_bench.py handwritten: Python,
#      psycopg 3, http.client keep-alive; SELECT ... LIMIT 100 FOR UPDATE
#      SKIP LOCKED, POST each one in turn with the id as Idempotency-Key,
#      DELETE, COMMIT), same nginx, same payloads; and eo / hand-written.
#
# Usage (as root: nginx and wrk are installed from Debian if missing and the
# servers run as "postgres"; or as a normal user with nginx installed; the
# extension must be installed with "make install"; the clients need
# python3 with psycopg 3: Debian package python3-psycopg):
#
#   EO_PG_BINDIR=<copy>/usr/lib/postgresql/15/bin test/bench/http_bench.sh
#
# Environment:
#   BENCH_HTTP_MESSAGES=20000     backlog of parts 1 and 3
#   BENCH_HTTP_TRANSACTIONS=20    transactions that publish the backlog
#   BENCH_HTTP_CONCURRENCY="16 64"  concurrency option of part 1's runs
#   BENCH_HTTP_SIGN=1             destinations sign their requests
#                                 (signing_secret; 0: unsigned)
#   BENCH_HAND_BATCH=100          rows per transaction of the hand-written relay
#   BENCH_LATENCY_RATE=500        messages/s of part 2
#   BENCH_LATENCY_SECONDS=20      duration of part 2
#   BENCH_LATENCY_CLIENTS=4       publishing connections of part 2
#   BENCH_PARTS="1 2 3 4"         which parts to run
#   BENCH_SLOW_MESSAGES=2000      part 4: messages to the slow receiver
#   BENCH_SLOW_MS=5               part 4: its answer delay (nginx echo module)
#   BENCH_NGINX_WORKERS=1         nginx worker processes
#   BENCH_WRK=1                   part 1's ceiling with wrk (0: skip it)
#   BENCH_WRK_SECONDS=3           duration of the wrk run
#   BENCH_WRK_CONNECTIONS=16      its keep-alive connections (2 threads)
#   BENCH_SYNC_COMMIT=off         run with synchronous_commit=off; default:
#                                 the server default (on)
#   BENCH_PERF=1                  also "perf record -g" the relay worker
#                                 during part 1 and list the relay's
#                                 costliest statements (pg_stat_statements);
#                                 reports go to the results directory
#                                 (needs perf and root; perf slows what it
#                                 records: not for timing)
#   BENCH_PYTHON=/usr/bin/python3 interpreter of the clients
#   BENCH_LOCALE=C                locale of the throwaway cluster
#   PG_CONFIG=pg_config           which PostgreSQL installation to use
#                                 (default: $EO_PG_BINDIR/pg_config if
#                                 EO_PG_BINDIR is set)
#   BENCH_NOTE="..."              a line for the machine table
#
# Results go to stdout and to test/bench/results/http-<timestamp>.md.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=http_bench
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

# ------------------------------------------------------------------ settings
n_msgs=${BENCH_HTTP_MESSAGES:-20000}
n_txns=${BENCH_HTTP_TRANSACTIONS:-20}
conc_list=${BENCH_HTTP_CONCURRENCY:-"16 64"}
sign=${BENCH_HTTP_SIGN:-1}
hand_batch=${BENCH_HAND_BATCH:-100}
lat_rate=${BENCH_LATENCY_RATE:-500}
lat_seconds=${BENCH_LATENCY_SECONDS:-20}
lat_clients=${BENCH_LATENCY_CLIENTS:-4}
parts=${BENCH_PARTS:-"1 2 3 4"}
slow_msgs=${BENCH_SLOW_MESSAGES:-2000}
slow_ms=${BENCH_SLOW_MS:-5}
nginx_workers=${BENCH_NGINX_WORKERS:-1}
do_wrk=${BENCH_WRK:-1}
wrk_seconds=${BENCH_WRK_SECONDS:-3}
wrk_conns=${BENCH_WRK_CONNECTIONS:-16}
sync_commit=${BENCH_SYNC_COMMIT:-}
do_perf=${BENCH_PERF:-0}
python=${BENCH_PYTHON:-/usr/bin/python3}
locale=${BENCH_LOCALE:-C}
pg_config=$(default_pg_config)
seconds=$lat_seconds            # (check_sync_commit's warmup; unused here)
target=4800                     # msg/s: 20 x pg_net's ~240 requests/s

for v in n_msgs n_txns hand_batch lat_rate lat_seconds lat_clients nginx_workers slow_msgs slow_ms \
         wrk_seconds wrk_conns; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v (BENCH_*) must be a positive integer"
done
for c in $conc_list; do
    if ! [[ $c =~ ^[1-9][0-9]*$ ]] || (( c > 1000 )); then
        die "BENCH_HTTP_CONCURRENCY must be integers 1..1000"
    fi
done
for p in $parts; do
    [[ $p =~ ^[1-4]$ ]] || die "BENCH_PARTS must be a list of 1, 2, 3, 4"
done
[[ $do_wrk == [01] ]] || die "BENCH_WRK must be 0 or 1"
(( n_msgs % n_txns == 0 )) || die "BENCH_HTTP_MESSAGES must be a multiple of BENCH_HTTP_TRANSACTIONS"
check_sync_commit
check_installation
check_perf
"$python" -c 'import psycopg' 2>/dev/null ||
    die "$python cannot import psycopg (3): install python3-psycopg (or set BENCH_PYTHON)"
require_files http_setup.sql http_reset.sql http_bench.py outbox_listener.py
has_part() { [[ " $parts " == *" $1 "* ]]; }

# --------------------------------------------------------------------- nginx
ensure_nginx                    # (bench_lib.sh: installs it from Debian if missing)
# Part 4's slow receiver answers after a delay: nginx's echo module.
echo_module=/usr/lib/nginx/modules/ngx_http_echo_module.so
if has_part 4 && [[ ! -f $echo_module ]]; then
    (( EUID == 0 )) || die "part 4 needs nginx's echo module: apt-get install libnginx-mod-http-echo (or BENCH_PARTS without 4)"
    apt_install libnginx-mod-http-echo
fi
# wrk measures what nginx alone answers (the ceiling of part 1).
wrk_note=""
if (( do_wrk )) && has_part 1 && ! ensure_wrk; then
    wrk_note="wrk is not installed (apt-get install wrk, or run as root): no ceiling"
    echo "$bench_name: $wrk_note" >&2
fi

# ------------------------------------------------------- who runs the server
setup_server_user
# cleanup (bench_lib.sh), before it stops the server: stop perf and nginx
cleanup_before_stop() {
    perf_stop
    stop_nginx
}
make_tmp
prepare_tmp "run nginx nginx/tmp" http_setup.sql http_reset.sql http_bench.py outbox_listener.py

# slow_location: part 4's receiver, answering after slow_ms (a location
# for start_nginx).
slow_location() {
    local secs
    secs=$(awk -v ms="$slow_ms" 'BEGIN { printf "%.3f", ms / 1000 }')
    printf '        location = /slow {\n'
    printf '            access_log %s hook buffer=64k flush=100ms;\n' "$tmp/nginx/access.log"
    printf '            echo_read_request_body;\n            echo_sleep %s;\n            echo ok;\n        }\n' "$secs"
}

# ------------------------------------------------------------ the servers
pick_port
http_port=$port
pick_port
[[ $port != "$http_port" ]] || pick_port
run_initdb
{
    server_conf_eo
    max_c=0
    for c in $conc_list; do (( c > max_c )) && max_c=$c; done
    # the concurrency option is capped by eo.http_max_concurrency (64)
    (( max_c > 64 )) && echo "eo.http_max_concurrency = $max_c"
    true
} >>"$tmp/data/postgresql.conf"

record_build                    # which build is measured
dsn="host=$tmp port=$port user=bench dbname=postgres"
url="http://127.0.0.1:$http_port/hook"
start_server
perf_after_start
run_setup http_setup.sql
perf_after_setup
if has_part 4; then
    start_nginx "load_module $echo_module;" "$(slow_location)"
else
    start_nginx
fi

# ----------------------------------------------------------------- helpers
py() { as_pg "$python" "$tmp/scripts/http_bench.py" "$@"; }
reset_tables() {
    psql_q -f "$tmp/scripts/http_reset.sql" >>"$tmp/logs/reset.log" 2>&1 ||
        { cat "$tmp/logs/reset.log" >&2; die "reset failed"; }
}
# create_hook NAME [CONCURRENCY]: an http destination to our nginx for
# every bench.* message (the concurrency option left out: its default).
create_hook() {
    local opts="'url', '$url'"
    [[ -n ${2:-} ]] && opts+=", 'concurrency', $2"
    [[ $sign == 1 ]] && opts+=", 'signing_secret', 'whsec_' || encode(sha256('http_bench'), 'base64')"
    psql_q -c "SELECT eo.create_destination('$1', 'http', jsonb_build_object($opts))" \
           -c "SELECT eo.subscribe('bench.*', '$1')" >/dev/null
}
drop_hook() { sql1 "SELECT eo.drop_destination('$1', true)" >/dev/null; }
# publish_backlog eo|hand: the backlog, in n_txns transactions, through
# eo.publish or into app_outbox; sets publish_s.
publish_backlog() {
    local t a b per=$(( n_msgs / n_txns )) f="$tmp/run/publish-$1.sql" t0
    : >"$f"
    for (( t = 0; t < n_txns; t++ )); do
        a=$(( t * per + 1 )); b=$(( (t + 1) * per ))
        if [[ $1 == eo ]]; then
            echo "SELECT count(eo.publish('bench.drain', bench_payload(g))) FROM generate_series($a, $b) AS g;" >>"$f"
        else
            echo "INSERT INTO app_outbox (payload) SELECT bench_payload(g) FROM generate_series($a, $b) AS g;" >>"$f"
        fi
    done
    t0=$(now_s)
    psql_q -f "$f" >/dev/null
    publish_s=$(elapsed "$t0" "$(now_s)")
    if [[ $1 == eo ]]; then
        [[ $(sql1 "SELECT count(*) FROM eo.outbox") == "$n_msgs" ]] || die "the backlog was not published"
        psql_q -c "VACUUM ANALYZE eo.outbox" -c "CHECKPOINT" >/dev/null
    else
        [[ $(sql1 "SELECT count(*) FROM app_outbox") == "$n_msgs" ]] || die "app_outbox was not filled"
        psql_q -c "VACUUM ANALYZE app_outbox" -c "CHECKPOINT" >/dev/null
    fi
}
# analyze_log FILE [COMMITS]: nginx's lines of a phase -> A_*.
analyze_log() {
    local args=(analyze --log "$1")
    [[ -n ${2:-} ]] && args+=(--commits "$2")
    ANALYSIS=$(py "${args[@]}") || die "analysis of $1 failed"
    parse_kv A_ "$ANALYSIS"
}
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }'; }
us_per() { awk -v t="$1" -v hz="$clk_tck" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print 0 }'; }
lines_note() {              # A_* -> "20000 / 20000 distinct, 0 extra"
    echo "$A_lines / $A_distinct distinct ids, $A_extra extra, $A_non2xx non-2xx"
}

# ------------------------------------------------------------ machine report
open_result_file http
py_version=$("$python" -c 'import sys, psycopg; print("Python %d.%d.%d, psycopg %s" % (sys.version_info[:3] + (psycopg.__version__,)))')
curl_version=$(curl-config --version 2>/dev/null || echo "libcurl (version unknown)")

report_machine_head http
[[ -n ${BENCH_NOTE:-} ]] && out "| note | $BENCH_NOTE |"
report_machine_server
out "| relay | eo.relay_batch_size = $(sql1 'SHOW eo.relay_batch_size'), eo.http_max_concurrency = $(sql1 'SHOW eo.http_max_concurrency'), $curl_version, destination kind http, subscription bench.*, $( [[ $sign == 1 ]] && echo "signed (signing_secret)" || echo "unsigned") |"
out "| receiver | $nginx_version, $nginx_workers worker process(es), 127.0.0.1:$http_port, POST /hook -> 200, keep-alive |"
out "| clients | $py_version |"
out "| messages | about 100 bytes of JSON each (bench_payload), no key, published in $n_txns transactions |"
out "| load average at start | $(loadavg) (other work on the machine disturbs every rate) |"
out ""

rpid=""
relay_worker() {            # rpid: the relay worker (it stays while disabled)
    set_relay on
    rpid=$(relay_pid) || die "no relay worker is running"
}
relay_worker
set_relay off

declare -A drain_rate drain_line
# ============================================================ part 1
if has_part 1; then
    for c in $conc_list; do
        echo "part 1: drain of $n_msgs messages, concurrency $c ..." >&2
        dest="hook_c$c"
        reset_tables
        create_hook "$dest" "$c"
        publish_backlog eo
        mark=$(log_mark)
        rc0=$(proc_cpu_ticks "$rpid"); nc0=$(nginx_cpu_ticks)
        perf_start "drain-c$c" -p "$rpid"
        stmts_reset
        res=$(py drain --dsn "$dsn" --destination "$dest" --expect "$n_msgs") || die "the drain poller failed"
        perf_stop
        stmts_save "drain-c$c"
        rc1=$(proc_cpu_ticks "$rpid"); nc1=$(nginx_cpu_ticks)
        set_relay off
        parse_kv D_ "$res"
        [[ $D_done == 1 ]] || die "concurrency $c: not drained: $res (see $tmp/logs/server.log)"
        attempts=$(sql1 "SELECT count(*) FROM eo.http_attempt")
        log_since "$mark" "$tmp/run/access-drain-c$c.log"
        analyze_log "$tmp/run/access-drain-c$c.log"
        secs=$(elapsed "$D_t0" "$D_t_done")
        r=$(rate "$n_msgs" "$secs")
        last_s=$(elapsed "$D_t0" "$A_last")
        first_ms=$(awk -v a="$D_t0" -v b="$A_first" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
        drain_rate[$c]=$r
        drain_line[$c]="| $c | $n_msgs | ${publish_s} s | ${secs} s | **$r** | ${last_s} s | $(rate "$n_msgs" "$last_s") | $first_ms ms | $(lines_note) | $A_connections | $attempts | $(us_per $(( rc1 - rc0 )) "$n_msgs") | $(us_per $(( nc1 - nc0 )) "$n_msgs") |"
        raw_rows+=("| 1 | drain, concurrency $c | $r msg/s | poller: $res; nginx: $ANALYSIS |")
        printf '  concurrency %s: %s msg/s (drained in %s s; last request at %s s); nginx: %s\n' \
            "$c" "$r" "$secs" "$last_s" "$(lines_note)" >&2
        drop_hook "$dest"
    done
    if [[ -n ${wrk_bin:-} ]]; then
        echo "part 1: ceiling: wrk, $wrk_conns connections, ${wrk_seconds}s ..." >&2
        wrk_ceiling "$url" "$wrk_seconds" "$wrk_conns"
        raw_rows+=("| 1 | ceiling: wrk, $wrk_conns connections, ${wrk_seconds}s | $WRK_RPS requests/s | errors: $WRK_ERRORS |")
        printf '  wrk: %s requests/s (%s errors)\n' "$WRK_RPS" "$WRK_ERRORS" >&2
    fi
fi

# ============================================================ part 3
if has_part 3; then
    echo "part 3: hand-written relay, $n_msgs messages ..." >&2
    reset_tables
    publish_backlog hand
    mark=$(log_mark)
    nc0=$(nginx_cpu_ticks)
    res=$(py handwritten --dsn "$dsn" --url "$url" --batch "$hand_batch") || die "the hand-written relay failed"
    nc1=$(nginx_cpu_ticks)
    parse_kv H_ "$res"
    [[ $H_sent == "$n_msgs" ]] || die "the hand-written relay sent $H_sent of $n_msgs"
    log_since "$mark" "$tmp/run/access-hand.log"
    analyze_log "$tmp/run/access-hand.log"
    hand_rate=$(rate "$H_sent" "$H_seconds")
    hand_cpu=$(awk -v c="$H_client_cpu" -v n="$n_msgs" 'BEGIN { printf "%.1f", c * 1e6 / n }')
    hand_bcpu=$(awk -v c="$H_backend_cpu" -v n="$n_msgs" 'BEGIN { printf "%.1f", c * 1e6 / n }')
    hand_line="| $hand_batch | $n_msgs | ${publish_s} s | ${H_seconds} s | **$hand_rate** | $(lines_note) | $A_connections | $hand_cpu | $hand_bcpu | $(us_per $(( nc1 - nc0 )) "$n_msgs") |"
    raw_rows+=("| 3 | hand-written relay | $hand_rate msg/s | client: $res; nginx: $ANALYSIS |")
    printf '  hand-written: %s msg/s (%s s); nginx: %s\n' "$hand_rate" "$H_seconds" "$(lines_note)" >&2
fi

# ============================================================ part 2
if has_part 2; then
    echo "part 2: latency at $lat_rate msg/s for ${lat_seconds}s ..." >&2
    reset_tables
    create_hook hook_lat
    set_relay on
    sleep 1
    load_p2=$(loadavg)
    mark=$(log_mark)
    res=$(py publish-at --dsn "$dsn" --rate "$lat_rate" --seconds "$lat_seconds" --clients "$lat_clients" \
        --out "$tmp/run/commits.tsv") || die "the publishing client failed"
    parse_kv P_ "$res"
    dres=$(py drain --dsn "$dsn" --destination hook_lat --expect "$P_sent" --timeout 120) ||
        die "the drain poller failed"
    parse_kv D_ "$dres"
    [[ $D_done == 1 ]] || die "latency run: not delivered: $dres"
    set_relay off
    log_since "$mark" "$tmp/run/access-latency.log"
    analyze_log "$tmp/run/access-latency.log" "$tmp/run/commits.tsv"
    lat_line="| $lat_rate | ${lat_seconds} s | $P_rate | $P_late_p99_ms / $P_late_max_ms ms | $A_matched / $P_timed ($A_missing missing) | $(lines_note) | ${A_p50} | ${A_p99} | ${A_max} | ${A_min} |"
    raw_rows+=("| 2 | latency at $lat_rate msg/s | p50 $A_p50 p99 $A_p99 max $A_max ms | client: $res; nginx: $ANALYSIS |")
    printf '  commit -> request: p50 %s, p99 %s, max %s ms (%s matched)\n' "$A_p50" "$A_p99" "$A_max" "$A_matched" >&2
    lat_summary="$A_p50 / $A_p99 / $A_max"   # (part 4 analyses its own log into A_*)
    drop_hook hook_lat
fi

# ============================================================ part 4
# The same drain against a receiver that answers after slow_ms: what a
# relay that sends one request at a time loses to network latency.
if has_part 4; then
    echo "part 4: $slow_msgs messages to a receiver answering after $slow_ms ms ..." >&2
    saved_n=$n_msgs; n_msgs=$slow_msgs; saved_url=$url
    url="http://127.0.0.1:$http_port/slow"
    reset_tables
    create_hook hook_slow
    publish_backlog eo
    mark=$(log_mark)
    res=$(py drain --dsn "$dsn" --destination hook_slow --expect "$n_msgs" --timeout 600) || die "the drain poller failed"
    set_relay off
    parse_kv D_ "$res"
    [[ $D_done == 1 ]] || die "part 4: not drained: $res"
    log_since "$mark" "$tmp/run/access-slow-eo.log"
    analyze_log "$tmp/run/access-slow-eo.log"
    slow_eo_rate=$(rate "$n_msgs" "$(elapsed "$D_t0" "$D_t_done")")
    slow_eo_lines=$(lines_note)
    drop_hook hook_slow
    reset_tables
    publish_backlog hand
    mark=$(log_mark)
    res=$(py handwritten --dsn "$dsn" --url "$url" --batch "$hand_batch") || die "the hand-written relay failed"
    parse_kv H_ "$res"
    [[ $H_sent == "$n_msgs" ]] || die "the hand-written relay sent $H_sent of $n_msgs"
    log_since "$mark" "$tmp/run/access-slow-hand.log"
    analyze_log "$tmp/run/access-slow-hand.log"
    slow_hand_rate=$(rate "$H_sent" "$H_seconds")
    slow_hand_lines=$(lines_note)
    n_msgs=$saved_n; url=$saved_url
    raw_rows+=("| 4 | slow receiver ($slow_ms ms) | eo $slow_eo_rate msg/s, hand-written $slow_hand_rate msg/s | eo: $slow_eo_lines; hand: $slow_hand_lines |")
    printf '  slow receiver: eo %s msg/s, hand-written %s msg/s\n' "$slow_eo_rate" "$slow_hand_rate" >&2
fi

# ============================================================ report
out "## Summary"
out ""
out "| # | measure | result | target | |"
out "|---|---|---:|---:|---|"
if has_part 1; then
    for c in $conc_list; do
        out "| 1 | drain of $n_msgs messages, concurrency $c: msg/s | ${drain_rate[$c]} | ≥ $target | $(verdict "${drain_rate[$c]}" "$target") |"
    done
    if [[ -n ${wrk_bin:-} ]]; then
        out "| 1 | ceiling: the same nginx under wrk ($wrk_conns keep-alive connections, ${wrk_seconds} s): requests/s | $WRK_RPS | | |"
        for c in $conc_list; do
            out "| 1 | drain, concurrency $c, ÷ the ceiling | $(ratio "${drain_rate[$c]}" "$WRK_RPS") | | |"
        done
    fi
fi
if has_part 3; then
    out "| 3 | hand-written relay (Python, sequential POSTs, 100 per transaction): msg/s | $hand_rate | | |"
    if has_part 1; then
        for c in $conc_list; do
            out "| 1/3 | eo (concurrency $c) / hand-written | $(ratio "${drain_rate[$c]}" "$hand_rate")× | | |"
        done
    fi
fi
if has_part 2; then
    out "| 2 | commit → request at $lat_rate msg/s: p50 / p99 / max | $lat_summary ms | | |"
fi
if has_part 4; then
    out "| 4 | receiver answering after $slow_ms ms, $slow_msgs messages: eo (concurrency 16) / hand-written | $slow_eo_rate / $slow_hand_rate msg/s = $(ratio "$slow_eo_rate" "$slow_hand_rate")× | | |"
fi
out ""
out "Target: at least 20× the ~240 requests/s pg_net reports for its own local benchmark, i.e. ≥ $target msg/s."
out ""

if has_part 1; then
    out "## 1. Drain: $n_msgs messages published with the relay disabled, then the relay enabled"
    out ""
    out "| concurrency | messages | published in | drained in (eo.stats) | msg/s | last request (nginx) after | msg/s (nginx) | first request after | nginx lines | connections | attempts recorded | relay CPU µs/msg | nginx CPU µs/msg |"
    out "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    for c in $conc_list; do out "${drain_line[$c]}"; done
    out ""
    out "Times from ALTER SYSTEM SET eo.relay_enabled = on + pg_reload_conf(); drained: the first"
    out "poll (every 50 ms) of eo.stats with pending = in_flight = retrying = 0 and"
    out "delivered_total = $n_msgs. nginx's times have a resolution of 1 ms."
    if [[ -n ${wrk_bin:-} ]]; then
        out "Ceiling: $(wrk_version) with $wrk_conns keep-alive connections on 2 threads for"
        out "${wrk_seconds} s against the same nginx and location: $WRK_RPS requests/s ($WRK_ERRORS errors);"
        out "its requests carry the same body size and headers shaped like the relay's."
    elif [[ -n $wrk_note ]]; then
        out "No ceiling: $wrk_note."
    fi
    out ""
fi
if has_part 3; then
    out "## 3. Hand-written relay (same nginx, same payloads, from a plain table)"
    out ""
    out "| rows per transaction | messages | inserted in | drained in | msg/s | nginx lines | connections | client CPU µs/msg | its backend CPU µs/msg | nginx CPU µs/msg |"
    out "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    out "$hand_line"
    out ""
    out "BEGIN; SELECT id, payload FROM app_outbox ORDER BY id LIMIT $hand_batch FOR UPDATE SKIP"
    out "LOCKED; one POST at a time on one keep-alive connection (http.client), the id as"
    out "Idempotency-Key, payload re-serialised with json.dumps; DELETE ... WHERE id = ANY(...);"
    out "COMMIT. Unsigned, and it holds its transaction (and row locks) open across the HTTP"
    out "requests, which the relay never does."
    out ""
fi
if has_part 2; then
    out "## 2. Latency at a steady $lat_rate msg/s (one message per transaction, $lat_clients clients; concurrency 16)"
    out ""
    out "| rate | duration | achieved | publishes late by p99 / max | matched | nginx lines | commit → request p50 (ms) | p99 | max | min |"
    out "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"
    out "$lat_line"
    out ""
    out "Load average when part 2 started: $load_p2. commit: the time the client's COMMIT"
    out "returned (autocommit SELECT eo.publish(...)); request: nginx's \$msec for the request"
    out "with that webhook-id. \$msec has a resolution of 1 ms (truncated), so each latency is"
    out "up to 1 ms below the true one. Negative values are real: the relay is woken when the"
    out "commit is done, and may send the request before the client (on a busy machine) has"
    out "seen the COMMIT return."
    out ""
fi
if has_part 4; then
    out "## 4. A receiver that answers after $slow_ms ms"
    out ""
    out "| relay | messages | msg/s | nginx lines |"
    out "|---|---:|---:|---|"
    out "| eo, concurrency 16 (the default) | $slow_msgs | **$slow_eo_rate** | $slow_eo_lines |"
    out "| hand-written (as in part 3) | $slow_msgs | **$slow_hand_rate** | $slow_hand_lines |"
    out ""
    out "nginx's echo module delays each answer by $slow_ms ms (echo_sleep), as a receiver"
    out "across a network would. The hand-written loop waits for each answer before the"
    out "next request; the relay keeps 16 in flight."
    out ""
fi
report_end

if [[ $result_file != /dev/null ]]; then
    append_raw_runs "| part | run | result | details |" "|---|---|---|---|"
    append_perf_reports http
    echo "results written to $result_file" >&2
fi
