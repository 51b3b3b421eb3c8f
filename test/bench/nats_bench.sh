#!/usr/bin/env bash
# A_*, D_*, P_*: assigned by parse_kv through printf -v
# shellcheck disable=SC2154
#
# nats_bench.sh: how fast does the relay publish into a replicated
# JetStream stream (destinations of kind nats), beside the http sink on the
# same machine?  In one throwaway PostgreSQL cluster and a three-node NATS
# cluster on loopback (nats-server -js, routed; stream BENCH capturing
# bench.>, 3 replicas, file storage):
#
#   1. Drain rate: a backlog of BENCH_NATS_MESSAGES (100,000) messages,
#      published in BENCH_NATS_TRANSACTIONS (100) transactions with the
#      relay disabled, then the relay enabled: messages/s until eo.stats
#      shows the destination drained (http_bench.py drain, polled every
#      50 ms).  The stream must then hold exactly the backlog.
#   2. Latency at a steady BENCH_LATENCY_RATE (1,000) messages/s for
#      BENCH_LATENCY_SECONDS (20): one message per transaction from
#      BENCH_LATENCY_CLIENTS (4) connections (http_bench.py publish-at,
#      noting when each COMMIT returned), matched by Nats-Msg-Id with the
#      time the stream stored the message (its leader's timestamp; the
#      acknowledgement follows once the replicas have it): p50, p99, max.
#   3. The same two figures for the http sink: test/bench/http_bench.sh
#      parts 1 and 2 with the same backlog, concurrency and rate
#      (BENCH_HTTP=0 skips it).
#
# Usage (as root, or as a user who can run the server; the extension
# installed in the PostgreSQL of EO_PG_BINDIR or PG_CONFIG; nats-server and
# libnats-dev installed; python3 with psycopg 3):
#
#   EO_PG_BINDIR=<copy>/usr/lib/postgresql/15/bin test/bench/nats_bench.sh
#
# Environment:
#   BENCH_NATS_MESSAGES=100000   backlog of part 1
#   BENCH_NATS_TRANSACTIONS=100  transactions that publish it
#   BENCH_NATS_CONCURRENCY=64    concurrency option of the destinations
#                                (the nats default; http gets the same)
#   BENCH_LATENCY_RATE=1000      messages/s of part 2
#   BENCH_LATENCY_SECONDS=20     duration of part 2
#   BENCH_LATENCY_CLIENTS=4      publishing connections of part 2
#   BENCH_HTTP=1                 part 3 (0: skip the http figures)
#   BENCH_PYTHON=/usr/bin/python3, BENCH_LOCALE=C, PG_CONFIG, BENCH_NOTE
#
# Results go to stdout and to test/bench/results/nats-<timestamp>.md.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=nats_bench
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

n_msgs=${BENCH_NATS_MESSAGES:-100000}
n_txns=${BENCH_NATS_TRANSACTIONS:-100}
conc=${BENCH_NATS_CONCURRENCY:-64}
lat_rate=${BENCH_LATENCY_RATE:-1000}
lat_seconds=${BENCH_LATENCY_SECONDS:-20}
lat_clients=${BENCH_LATENCY_CLIENTS:-4}
do_http=${BENCH_HTTP:-1}
python=${BENCH_PYTHON:-/usr/bin/python3}
locale=${BENCH_LOCALE:-C}
sync_commit=${BENCH_SYNC_COMMIT:-}
do_perf=0
pg_config=$(default_pg_config)
seconds=$lat_seconds

for v in n_msgs n_txns conc lat_rate lat_seconds lat_clients; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v (BENCH_*) must be a positive integer"
done
(( conc <= 1000 )) || die "BENCH_NATS_CONCURRENCY must be 1..1000"
(( n_msgs % n_txns == 0 )) || die "BENCH_NATS_MESSAGES must be a multiple of BENCH_NATS_TRANSACTIONS"
[[ $do_http == [01] ]] || die "BENCH_HTTP must be 0 or 1"
check_sync_commit
check_installation
command -v nats-server >/dev/null || die "nats-server is not installed (Debian package nats-server)"
[[ -f /usr/include/nats/nats.h ]] || die "libnats is not installed (Debian package libnats-dev)"
"$python" -c 'import psycopg' 2>/dev/null ||
    die "$python cannot import psycopg (3): install python3-psycopg (or set BENCH_PYTHON)"
require_files http_setup.sql http_reset.sql http_bench.py outbox_listener.py ../nats_tool.c

setup_server_user
nats_pids=()
cleanup_before_stop() {
    local p
    for p in "${nats_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${nats_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
make_tmp
prepare_tmp "run nats" http_setup.sql http_reset.sql http_bench.py outbox_listener.py

# ------------------------------------------------------------ NATS cluster
cc -O2 -o "$tmp/nats/nats_tool" "$script_dir/../nats_tool.c" -lnats || die "cannot build nats_tool"
nports=()
for _ in 1 2 3 4 5 6; do
    pick_port
    while [[ " ${nports[*]} " == *" $port "* ]]; do pick_port; done
    nports+=("$port")
done
nats_urls=""
for i in 0 1 2; do
    cport=${nports[$(( i + 3 ))]}
    routes=""
    for j in 0 1 2; do
        (( j == i )) && continue
        routes+="${routes:+,}nats://127.0.0.1:${nports[$(( j + 3 ))]}"
    done
    nats-server -js -a 127.0.0.1 -p "${nports[$i]}" -sd "$tmp/nats/store$i" \
        --server_name "bench$i" --cluster_name eo_bench --cluster "nats://127.0.0.1:$cport" \
        --routes "$routes" -l "$tmp/nats/nats$i.log" &
    nats_pids+=("$!")
    nats_urls+="${nats_urls:+,}nats://127.0.0.1:${nports[$i]}"
done
tool() { "$tmp/nats/nats_tool" "$1" "$nats_urls" "${@:2}"; }
servers_json=$(printf '%s' "$nats_urls" | awk -F, '{ for (i = 1; i <= NF; i++) printf "%s\"%s\"", (i > 1 ? ", " : ""), $i }')

# ------------------------------------------------------------ PostgreSQL
pick_port
while [[ " ${nports[*]} " == *" $port "* ]]; do pick_port; done
run_initdb
server_conf_eo >>"$tmp/data/postgresql.conf"
record_build
dsn="host=$tmp port=$port user=bench dbname=postgres"
start_server
run_setup http_setup.sql

py() { as_pg "$python" "$tmp/scripts/http_bench.py" "$@"; }
reset_tables() {
    psql_q -f "$tmp/scripts/http_reset.sql" >>"$tmp/logs/reset.log" 2>&1 ||
        { cat "$tmp/logs/reset.log" >&2; die "reset failed"; }
}
# fresh_stream: an empty stream BENCH with three replicas.
fresh_stream() {
    tool delete BENCH >/dev/null
    tool create BENCH 'bench.>' 3 600 || die "cannot create the stream"
}
create_dest() {
    psql_q -c "SELECT eo.create_destination('$1', 'nats', '{\"servers\": [$servers_json], \"stream\": \"BENCH\", \"concurrency\": $conc}')" \
           -c "SELECT eo.subscribe('bench.*', '$1')" >/dev/null
}
drop_dest() { sql1 "SELECT eo.drop_destination('$1', true)" >/dev/null; }

open_result_file nats
report_machine_head nats
[[ -n ${BENCH_NOTE:-} ]] && out "| note | $BENCH_NOTE |"
report_machine_server
out "| NATS | $(nats-server --version), 3 servers on 127.0.0.1 (routed), stream BENCH: bench.>, 3 replicas, file storage; libnats $(awk -F'"' '/define NATS_VERSION_STRING/ {print $2}' /usr/include/nats/version.h) |"
out "| relay | eo.relay_batch_size = $(sql1 'SHOW eo.relay_batch_size'), destination kind nats, concurrency $conc, option stream = BENCH |"
out "| messages | about 100 bytes of JSON each (bench_payload), no key |"
out "| load average at start | $(loadavg) (other work on the machine disturbs every rate) |"
out ""

set_relay on
relay_pid >/dev/null || die "no relay worker is running"
set_relay off

# ============================================================ part 1
echo "part 1: drain of $n_msgs messages into the replicated stream ..." >&2
reset_tables
fresh_stream
create_dest js_drain
per=$(( n_msgs / n_txns ))
: >"$tmp/run/publish.sql"
for (( t = 0; t < n_txns; t++ )); do
    echo "SELECT count(eo.publish('bench.drain', bench_payload(g))) FROM generate_series($(( t * per + 1 )), $(( (t + 1) * per ))) AS g;" >>"$tmp/run/publish.sql"
done
t0=$(now_s)
psql_q -f "$tmp/run/publish.sql" >/dev/null
publish_s=$(elapsed "$t0" "$(now_s)")
psql_q -c "VACUUM ANALYZE eo.outbox" -c "CHECKPOINT" >/dev/null
res=$(py drain --dsn "$dsn" --destination js_drain --expect "$n_msgs" --timeout 900) || die "the drain poller failed"
set_relay off
parse_kv D_ "$res"
[[ $D_done == 1 ]] || die "not drained: $res (see $tmp/logs/server.log)"
drain_s=$(elapsed "$D_t0" "$D_t_done")
nats_drain=$(awk -v n="$n_msgs" -v s="$drain_s" 'BEGIN { printf "%.0f", n / s }')
stored=$(tool count BENCH)
[[ $stored == "$n_msgs" ]] || die "the stream holds $stored messages, not $n_msgs"
printf '  nats: %s msg/s (drained in %s s), the stream holds %s\n' "$nats_drain" "$drain_s" "$stored" >&2
drop_dest js_drain

# ============================================================ part 2
echo "part 2: latency at $lat_rate msg/s for ${lat_seconds}s ..." >&2
reset_tables
fresh_stream
create_dest js_lat
set_relay on
sleep 1
res=$(py publish-at --dsn "$dsn" --rate "$lat_rate" --seconds "$lat_seconds" --clients "$lat_clients" \
    --out "$tmp/run/commits.tsv") || die "the publishing client failed"
parse_kv P_ "$res"
dres=$(py drain --dsn "$dsn" --destination js_lat --expect "$P_sent" --timeout 300) || die "the drain poller failed"
parse_kv D_ "$dres"
[[ $D_done == 1 ]] || die "latency run: not delivered: $dres"
set_relay off
tool dump BENCH >"$tmp/run/stream.txt"
lat=$(awk 'NR == FNR { commit[$1] = $2; next }
           ($2 in commit) { d = ($5 - commit[$2]) * 1000; print d }' \
        "$tmp/run/commits.tsv" "$tmp/run/stream.txt" | sort -g |
      awk '{ a[NR] = $1 } END {
               if (NR == 0) { print "0 n/a n/a n/a"; exit }
               p50 = a[int((NR - 1) * 0.50) + 1]; p99 = a[int((NR - 1) * 0.99) + 1];
               printf "%d %.1f %.1f %.1f\n", NR, p50, p99, a[NR] }')
read -r lat_n lat_p50 lat_p99 lat_max <<<"$lat"
(( lat_n == P_timed )) || die "matched $lat_n of $P_timed timed messages in the stream"
printf '  nats: commit -> stored p50 %s, p99 %s, max %s ms (%s matched)\n' "$lat_p50" "$lat_p99" "$lat_max" "$lat_n" >&2
drop_dest js_lat

# ============================================================ part 3
http_drain="(skipped)"; http_lat="(skipped)"
if (( do_http )); then
    echo "part 3: the http sink, same backlog and rate (http_bench.sh parts 1 and 2) ..." >&2
    http_out=$(BENCH_PARTS="1 2" BENCH_WRK=0 BENCH_HTTP_MESSAGES="$n_msgs" BENCH_HTTP_TRANSACTIONS="$n_txns" \
        BENCH_HTTP_CONCURRENCY="$conc" BENCH_LATENCY_RATE="$lat_rate" BENCH_LATENCY_SECONDS="$lat_seconds" \
        BENCH_LATENCY_CLIENTS="$lat_clients" PG_CONFIG="$pg_config" "$script_dir/http_bench.sh") ||
        die "http_bench.sh failed"
    http_drain=$(printf '%s\n' "$http_out" | awk -F'|' '/^\| 1 \| drain of .* msg\/s/ { gsub(/ /, "", $4); print $4; exit }')
    http_lat=$(printf '%s\n' "$http_out" | awk -F'|' '/^\| 2 \| commit → request/ { gsub(/^ +| +$/, "", $4); print $4; exit }')
fi

# ============================================================ report
out "## Summary"
out ""
out "| measure | nats (JetStream, 3 replicas) | http (nginx on loopback) |"
out "|---|---:|---:|"
out "| drain of $n_msgs messages, concurrency $conc: msg/s | **$nats_drain** | **$http_drain** |"
out "| commit → stored in the stream (nats) / request received (http) at $lat_rate msg/s: p50 / p99 / max | $lat_p50 / **$lat_p99** / $lat_max ms | $http_lat |"
out ""
out "Drain: the backlog was published in $n_txns transactions (${publish_s} s) with the relay"
out "disabled; times from enabling it to the poll of eo.stats that saw it drained"
out "(${drain_s} s for nats); the stream then held $stored messages."
out "Latency: $P_timed messages, one per transaction from $lat_clients connections; commit: when"
out "the client's COMMIT returned; stored: the stream leader's timestamp of the message"
out "(matched by Nats-Msg-Id). The relay records the delivery after the acknowledgement,"
out "which follows once a majority of the replicas stored it. http: nginx's \$msec of the"
out "request (1 ms resolution), as measured by http_bench.sh in its own throwaway cluster."
out ""
report_end
[[ $result_file != /dev/null ]] && echo "results written to $result_file" >&2
exit 0
