#!/usr/bin/env bash
# Variables read by bench_lib.sh (bench_name, locale, ...) and set by it
# (tmp, bindir, port, ...):
# shellcheck disable=SC2034,SC2154
#
# queue_bench.sh: how fast do consumers work through a queue destination
# (eo.read + work + eo.ack), beside a hand-written SKIP LOCKED queue in the
# same cluster and the same run, and at what cost?
#
#   throughput  BENCH_QUEUE_MESSAGES (400,000) messages of about 100 bytes,
#               keyed over BENCH_QUEUE_KEYS (10,000) keys, are routed by the
#               relay into queue destination "bench" (timed: the enqueue
#               rate); the same number of rows, with the same envelope as
#               jsonb, go into the hand-written queue hw_queue (pgmq's shape).
#               Then BENCH_QUEUE_CLIENTS (4) pgbench clients each run
#               BENCH_QUEUE_BATCHES (800) batches of 100: eo.read, then the
#               work (a row per message in queue_work) and eo.ack in one
#               transaction (queue_w1_eo.pgbench); and the same on hw_queue
#               (queue_w2_handwritten.pgbench).  msg/s = messages acked /
#               pgbench's time.  Target for eo: >= 50,000 msg/s.
#   cost        table + index bytes per queued message (both queues, full),
#               and per message consumed: WAL bytes and WAL records
#               (pg_stat_wal), heap tuples written (pg_stat_user_tables:
#               inserts + updates + deletes of the queue tables).
#   latency     a LISTEN-woken consumer (queue_latency.py) while pgbench
#               publishes BENCH_LATENCY_RATE (1,000) messages/s, one per
#               transaction, for BENCH_LATENCY_SECONDS (15): from the
#               commit (the end of the transaction in pgbench's log,
#               matched by the payload's client and transaction number,
#               as relay_bench.sh times NOTIFY) to eo.read returning it;
#               p50, p99 (target < 10 ms), max.  Beside it, from
#               published_at (inside the transaction, before COMMIT and
#               its WAL flush: an upper bound).  Publishing
#               starts once the consumer listens (started together, the
#               first messages used to wait ~250 ms for python's start-up:
#               that alone made p99 100-300 ms).  The table the
#               throughput runs emptied is vacuumed first.
#
# Results go to stdout and test/bench/results/queue-<stamp>.md.  Needs the
# extension installed in the PostgreSQL of pg_config (PG_CONFIG, or
# EO_PG_BINDIR/pg_config), pgbench, and python3 with psycopg 3.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=queue_bench
client_backend_re='\[local\]'     # ps line of a client backend (wait_backends_reaped)
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

# ------------------------------------------------------------------ settings
messages=${BENCH_QUEUE_MESSAGES:-400000}
keys=${BENCH_QUEUE_KEYS:-10000}
clients=${BENCH_QUEUE_CLIENTS:-4}
batches=${BENCH_QUEUE_BATCHES:-800}
lat_rate=${BENCH_LATENCY_RATE:-1000}
lat_seconds=${BENCH_LATENCY_SECONDS:-15}
sync_commit=${BENCH_SYNC_COMMIT:-}
seconds=$lat_seconds
locale=${BENCH_LOCALE:-C}
pg_config=$(default_pg_config)
python=${BENCH_PYTHON:-/usr/bin/python3}

for v in messages keys clients batches lat_rate lat_seconds; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
(( clients * batches * 100 <= messages )) ||
    die "BENCH_QUEUE_MESSAGES must be at least clients x batches x 100 (the queues must not run dry)"
check_sync_commit
check_installation

files=(queue_setup.sql queue_w1_eo.pgbench queue_w2_handwritten.pgbench queue_w3_publish.pgbench
       queue_latency.py outbox_listener.py)
require_files "${files[@]}"

setup_server_user
make_tmp
prepare_tmp run "${files[@]}"
pick_port
run_initdb
{
    server_conf eo_processing
    echo "eo.relay_batch_size = 1000"
    echo "max_connections = 40"
} >>"$tmp/data/postgresql.conf"
record_build
start_server
run_setup queue_setup.sql

open_result_file queue
report_machine_head queue
report_machine_server
out "| load average at start | $(loadavg) |"
out ""

q() { psql_q -At -c "$1"; }
wal() { q "SELECT wal_bytes || ' ' || wal_records FROM pg_stat_wal"; }
tuples() {  # inserts + updates + deletes of the tables named
    q "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables
        WHERE schemaname || '.' || relname IN ($1)"
}

# ------------------------------------------------------------- fill both queues
echo "filling: $messages messages into each queue ..." >&2
t0=$(now_s)
q "SELECT count(eo.publish('bench.job', jsonb_build_object('n', g, 'pad', repeat('x', 40)),
                           'key-' || (g % $keys)))
     FROM generate_series(1, $messages) AS g" >/dev/null
t1=$(now_s)
until [[ $(q "SELECT ready FROM eo.stats WHERE destination = 'bench'") -ge $messages ]]; do
    sleep 0.2
done
t2=$(now_s)
q "INSERT INTO hw_queue (vt, message)
   SELECT now(), jsonb_build_object('id', id, 'topic', topic, 'key', key, 'payload', payload,
                                    'published_at', published_at)
     FROM eo.queue_message" >/dev/null
psql_q -c "VACUUM ANALYZE eo.queue_message" -c "VACUUM ANALYZE hw_queue" -c "CHECKPOINT" >/dev/null
eo_bytes=$(q "SELECT pg_total_relation_size('eo.queue_message') / $messages")
hw_bytes=$(q "SELECT pg_total_relation_size('hw_queue') / $messages")
enqueue_rate=$(awk -v n="$messages" -v a="$t0" -v b="$t2" 'BEGIN { printf "%.0f", n / (b - a) }')
publish_s=$(elapsed "$t0" "$t1")

# ------------------------------------------------------------ consume, twice
consume() {     # workload tables -> MSGS RATE WALB WALR TUP LAT_MS
    local w=$1 tables=$2 wal0 wal1 tup0 tup1 log="$tmp/logs/$1.log"
    q "TRUNCATE queue_work; CHECKPOINT" >/dev/null
    wal0=$(wal); tup0=$(tuples "$tables")
    as_pg "$bindir/pgbench" -n -M simple -c "$clients" -j "$clients" -t "$batches" \
        -f "$tmp/scripts/$w.pgbench" >"$log" 2>&1 || { cat "$log" >&2; die "pgbench $w failed"; }
    wait_backends_reaped    # an exiting backend flushes its table statistics
    wal1=$(wal); tup1=$(tuples "$tables")
    MSGS=$(q "SELECT count(*) FROM queue_work")
    local tps
    tps=$(awk '/^tps = / {print $3; exit}' "$log")
    LAT_MS=$(awk '/^latency average = / {print $4; exit}' "$log")
    # each pgbench transaction is one batch; every batch had 100 messages
    RATE=$(awk -v t="$tps" -v m="$MSGS" -v x="$(( clients * batches ))" \
        'BEGIN { printf "%.0f", t * m / x }')
    WALB=$(awk -v a="${wal0% *}" -v b="${wal1% *}" -v m="$MSGS" 'BEGIN { printf "%.0f", (b - a) / m }')
    WALR=$(awk -v a="${wal0#* }" -v b="${wal1#* }" -v m="$MSGS" 'BEGIN { printf "%.2f", (b - a) / m }')
    TUP=$(awk -v a="$tup0" -v b="$tup1" -v m="$MSGS" 'BEGIN { printf "%.2f", (b - a) / m }')
}

echo "consuming: eo.read + eo.ack ..." >&2
consume queue_w1_eo "'eo.queue_message', 'eo.queue_ack'"
eo_msgs=$MSGS eo_rate=$RATE eo_walb=$WALB eo_walr=$WALR eo_tup=$TUP eo_lat=$LAT_MS
echo "consuming: hand-written SKIP LOCKED ..." >&2
consume queue_w2_handwritten "'public.hw_queue'"
hw_msgs=$MSGS hw_rate=$RATE hw_walb=$WALB hw_walr=$WALR hw_tup=$TUP hw_lat=$LAT_MS

# ------------------------------------------------------------ report (throughput)
out "## Queue destinations: read + work + ack ($clients consumers, batches of 100)"
out ""
out "| | eo.read + eo.ack | hand-written SKIP LOCKED (baseline) | eo / baseline | target |"
out "|---|---|---|---|---|"
out "| msg/s (read + work + ack) | **$eo_rate** | $hw_rate | $(ratio "$eo_rate" "$hw_rate") | >= 50,000: $(verdict "$eo_rate" 50000) |"
out "| messages consumed | $eo_msgs | $hw_msgs | | |"
out "| batch latency, average (ms) | $eo_lat | $hw_lat | | |"
out "| table + index bytes per queued message | $eo_bytes | $hw_bytes | | |"
out "| WAL bytes per message consumed | $eo_walb | $hw_walb | | |"
out "| WAL records per message consumed | $eo_walr | $hw_walr | | |"
out "| heap tuples written per message consumed (queue tables) | $eo_tup | $hw_tup | | |"
out ""
out "Filling: $messages messages published in one statement (${publish_s} s) and routed by"
out "the relay into the queue at $enqueue_rate msg/s (publish to all enqueued); $keys keys."
out ""
# ------------------------------------------------------------ latency
echo "latency: $lat_rate msg/s for $lat_seconds s ..." >&2
q "SELECT eo.drop_destination('bench', force => true);
   SELECT eo.create_destination('bench', 'queue', '{\"channel\": \"bench_ready\"}');
   SELECT eo.subscribe('bench.*', 'bench')" >/dev/null
# The throughput runs left 400,000 dead rows: vacuum them now rather than
# have autovacuum do it on the two CPUs during the latency run.
psql_q -c "VACUUM ANALYZE eo.queue_message" -c "CHECKPOINT" >/dev/null
as_pg "$python" "$tmp/scripts/queue_latency.py" "host=$tmp port=$port user=bench dbname=postgres" \
    bench bench_ready $(( lat_seconds + 3 )) - "$tmp/run/latency.tsv" \
    >"$tmp/logs/latency.out" 2>"$tmp/logs/latency.err" &
lat_pid=$!
for _ in $(seq 300); do     # up to 30 s for python and its connection
    grep -q '^listening' "$tmp/logs/latency.err" 2>/dev/null && break
    kill -0 "$lat_pid" 2>/dev/null || { cat "$tmp/logs/latency.err" >&2; die "queue_latency.py failed"; }
    sleep 0.1
done
grep -q '^listening' "$tmp/logs/latency.err" || die "queue_latency.py did not start listening"
as_pg "$bindir/pgbench" -n -M prepared -c 4 -j 2 -R "$lat_rate" -T "$lat_seconds" \
    -D n=0 -l --log-prefix="$tmp/run/publish" \
    -f "$tmp/scripts/queue_w3_publish.pgbench" >"$tmp/logs/publish.log" 2>&1 ||
    { cat "$tmp/logs/publish.log" >&2; die "pgbench publish failed"; }
wait "$lat_pid" || { cat "$tmp/logs/latency.err" >&2; die "queue_latency.py failed"; }
parse_kv L_ "$(cat "$tmp/logs/latency.out")"
# From the commit: each message matched with the end of its transaction in
# pgbench's log (what the client saw as COMMIT's return).
listener_analyze "$tmp/run/latency.tsv" "$tmp/run/publish".*

# ------------------------------------------------------------ report (latency)
out "| a LISTEN-woken consumer has read it, at $lat_rate msg/s | from COMMIT | from eo.publish | target |"
out "|---|---|---|---|"
out "| messages | ${A_ack_matched:-0} matched with pgbench's log | ${L_count:-0} | |"
out "| p50 (ms) | ${A_ack_p50:-n/a} | ${L_p50_ms:-n/a} | |"
out "| p99 (ms) | **${A_ack_p99:-n/a}** | ${L_p99_ms:-n/a} | commit -> read < 10: $(verdict 10 "${A_ack_p99:-1e9}") |"
out "| max (ms) | ${A_ack_max:-n/a} | ${L_max_ms:-n/a} | |"
out "| messages slower than 10 ms | | ${L_over10_ms:-n/a} | |"
out ""
out "From COMMIT: from the end of the publishing transaction in pgbench's log"
out "(COMMIT returned to the client) to eo.read returning the message. From"
out "eo.publish: from published_at, taken inside the transaction before COMMIT,"
out "so it also counts the COMMIT itself (its WAL flush): an upper bound."
out ""
report_end
