#!/usr/bin/env bash
# D_*, P_*: assigned by parse_kv through printf -v
# shellcheck disable=SC2154
#
# kafka_bench.sh: how fast does the relay publish into Kafka (destinations
# of kind kafka), in the default mode and with exactly_once, beside a
# notify destination in the same run?  In one throwaway PostgreSQL cluster
# and librdkafka's mock cluster (three brokers on 127.0.0.1, run by
# test/kafka_tool.c; topics of BENCH_KAFKA_PARTITIONS partitions,
# replication factor 3):
#
#   1. Drain rate: a backlog of BENCH_KAFKA_MESSAGES (100,000) messages,
#      published in BENCH_KAFKA_TRANSACTIONS (100) transactions with the
#      relay disabled, then the relay enabled: messages/s until eo.stats
#      shows the destination drained (http_bench.py drain, polled every
#      50 ms).  Four destinations, one after the other, each with the same
#      backlog: kafka in the default mode, the same with a key per message
#      (BENCH_KAFKA_KEYS distinct keys: one message of a key on the wire at
#      a time), kafka with exactly_once, and notify (pg_notify, nobody
#      listening: the relay's own cost, the reference).  Each Kafka topic
#      is then read back: it must hold every message, each once.
#   2. Latency at a steady BENCH_LATENCY_RATE (1,000) messages/s for
#      BENCH_LATENCY_SECONDS (20), default mode: one message per
#      transaction from BENCH_LATENCY_CLIENTS (4) connections
#      (http_bench.py publish-at, noting when each COMMIT returned),
#      matched by eo-id with (a) the record's timestamp, which librdkafka
#      sets when the relay produces it (milliseconds), and (b) the time a
#      consumer started before the run received it (fetches wait at most
#      5 ms).  Kafka acknowledges the record between the two; the relay
#      records the delivery after that acknowledgement.  p50, p99, max.
#
# The mock cluster keeps its logs in memory, in the same machine, and does
# no replication: rates against a real cluster are bounded by its network
# and disks instead.
#
# Usage (as root, or as a user who can run the server; the extension
# installed in the PostgreSQL of EO_PG_BINDIR or PG_CONFIG; librdkafka-dev;
# python3 with psycopg 3):
#
#   EO_PG_BINDIR=<copy>/usr/lib/postgresql/15/bin test/bench/kafka_bench.sh
#
# Environment:
#   BENCH_KAFKA_MESSAGES=100000   backlog of part 1
#   BENCH_KAFKA_TRANSACTIONS=100  transactions that publish it
#   BENCH_KAFKA_PARTITIONS=6      partitions of each topic
#   BENCH_KAFKA_KEYS=1000         distinct keys of the keyed drain
#   BENCH_KAFKA_CONCURRENCY=      concurrency option of the destinations
#                                 (empty: the kind's default)
#   BENCH_KAFKA_PROPERTIES=       option "properties" of the kafka
#                                 destinations, a JSON object (e.g.
#                                 '{"linger.ms": 0}'; empty: none)
#   BENCH_LATENCY_RATE=1000       messages/s of part 2
#   BENCH_LATENCY_SECONDS=20      duration of part 2
#   BENCH_LATENCY_CLIENTS=4       publishing connections of part 2
#   BENCH_PYTHON=/usr/bin/python3, BENCH_LOCALE=C, PG_CONFIG, BENCH_NOTE
#
# Results go to stdout and to test/bench/results/kafka-<timestamp>.md.  A
# short run (BENCH_KAFKA_MESSAGES=2000 BENCH_LATENCY_SECONDS=2) is a smoke
# check of the script and the sink, nothing more.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=kafka_bench
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

n_msgs=${BENCH_KAFKA_MESSAGES:-100000}
n_txns=${BENCH_KAFKA_TRANSACTIONS:-100}
partitions=${BENCH_KAFKA_PARTITIONS:-6}
n_keys=${BENCH_KAFKA_KEYS:-1000}
conc=${BENCH_KAFKA_CONCURRENCY:-}
props=${BENCH_KAFKA_PROPERTIES:-}
lat_rate=${BENCH_LATENCY_RATE:-1000}
lat_seconds=${BENCH_LATENCY_SECONDS:-20}
lat_clients=${BENCH_LATENCY_CLIENTS:-4}
python=${BENCH_PYTHON:-/usr/bin/python3}
locale=${BENCH_LOCALE:-C}
sync_commit=${BENCH_SYNC_COMMIT:-}
do_perf=0
pg_config=$(default_pg_config)
seconds=$lat_seconds

for v in n_msgs n_txns partitions n_keys lat_rate lat_seconds lat_clients; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v (BENCH_*) must be a positive integer"
done
[[ -z $conc || $conc =~ ^[1-9][0-9]*$ ]] || die "BENCH_KAFKA_CONCURRENCY must be a positive integer"
(( n_msgs % n_txns == 0 )) || die "BENCH_KAFKA_MESSAGES must be a multiple of BENCH_KAFKA_TRANSACTIONS"
check_sync_commit
check_installation
[[ -f /usr/include/librdkafka/rdkafka_mock.h ]] || die "librdkafka is not installed (Debian package librdkafka-dev)"
"$python" -c 'import psycopg' 2>/dev/null ||
    die "$python cannot import psycopg (3): install python3-psycopg (or set BENCH_PYTHON)"
require_files http_setup.sql http_reset.sql http_bench.py outbox_listener.py ../kafka_tool.c

setup_server_user
mock_pid=""
# (called by bench_lib.sh's EXIT trap)
# shellcheck disable=SC2317
cleanup_before_stop() {
    if [[ -n $mock_pid ]]; then
        exec {mock_fd}>&- 2>/dev/null || true     # end of input: the mock stops
        kill "$mock_pid" 2>/dev/null || true
        wait "$mock_pid" 2>/dev/null || true
    fi
}
make_tmp
prepare_tmp "run kafka" http_setup.sql http_reset.sql http_bench.py outbox_listener.py

# ------------------------------------------------------------ mock cluster
tool=$tmp/kafka/kafka_tool
cc -O2 -o "$tool" "$script_dir/../kafka_tool.c" -lrdkafka || die "cannot build kafka_tool"
mkfifo "$tmp/kafka/commands"
"$tool" mock 3 <"$tmp/kafka/commands" >"$tmp/kafka/answers" 2>"$tmp/kafka/mock.log" &
mock_pid=$!
exec {mock_fd}>"$tmp/kafka/commands"
answers=0
# mock_line N: the Nth line the mock printed (waits up to 30 s).
mock_line() {
    local i line
    for (( i = 0; i < 600; i++ )); do
        line=$(sed -n "${1}p" "$tmp/kafka/answers")
        [[ -n $line ]] && { printf '%s\n' "$line"; return 0; }
        sleep 0.05
    done
    die "the mock cluster did not answer (see $tmp/kafka/mock.log)"
}
bootstrap=$(mock_line 1)
answers=1
[[ $bootstrap =~ ^127\.0\.0\.1: ]] || die "unexpected bootstrap servers: $bootstrap"
# mock COMMAND: one command of kafka_tool's mock mode; dies unless "ok".
mock() {
    local answer
    echo "$*" >&"$mock_fd"
    answers=$(( answers + 1 ))
    answer=$(mock_line "$answers")
    [[ $answer == ok* ]] || die "mock cluster: $*: $answer"
}
# read_topic TOPIC MIN [OPTIONS]: the topic's records as JSON lines.
read_topic() { "$tool" read "$bootstrap" "$1" --min "$2" --timeout 300 "${@:3}"; }
# count_ids FILE: "<records> <distinct eo-id>" of read_topic's output.
count_ids() {
    grep -o '\["eo-id","[^"]*"\]' "$1" | sort | awk '{ n++; if ($0 != prev) d++; prev = $0 }
        END { printf "%d %d\n", n, d }'
}

# ------------------------------------------------------------ PostgreSQL
pick_port
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
kafka_json=${conc:+, \"concurrency\": $conc}${props:+, \"properties\": $props}
# create_dest NAME KIND OPTIONS-JSON-MEMBERS: a destination for bench.*
# (kafka ones with BENCH_KAFKA_CONCURRENCY and BENCH_KAFKA_PROPERTIES).
create_dest() {
    local extra=""
    [[ $2 == kafka ]] && extra=$kafka_json
    psql_q -c "SELECT eo.create_destination('$1', '$2', '{$3 $extra}')" \
           -c "SELECT eo.subscribe('bench.*', '$1')" >/dev/null
}
drop_dest() { sql1 "SELECT eo.drop_destination('$1', true)" >/dev/null; }

open_result_file kafka
report_machine_head kafka
[[ -n ${BENCH_NOTE:-} ]] && out "| note | $BENCH_NOTE |"
report_machine_server
rdkafka_version=$(awk '/^Version:/ { print $2; exit }' /usr/lib/x86_64-linux-gnu/pkgconfig/rdkafka.pc 2>/dev/null || true)
out "| Kafka | librdkafka ${rdkafka_version:-(version unknown)} mock cluster: 3 brokers on 127.0.0.1 in one process, topics of $partitions partitions, replication factor 3 (in memory, nothing replicated) |"
out "| relay | eo.relay_batch_size = $(sql1 'SHOW eo.relay_batch_size'), concurrency ${conc:-of the kind (default)}, properties ${props:-none} |"
out "| messages | about 100 bytes of JSON each (bench_payload) |"
out "| load average at start | $(loadavg) (other work on the machine disturbs every rate) |"
out ""

set_relay on
relay_pid >/dev/null || die "no relay worker is running"
set_relay off

# ============================================================ part 1
per=$(( n_msgs / n_txns ))
# drain LABEL NAME KIND OPTIONS KEYED: publish the backlog, drain it, set
# rate (msg/s), drain_s and cpu_us (the relay worker's CPU per message: the
# worker's CPU time when the drain ends, less what it had at the end of the
# previous drain if it is the same process; it only waits in between).
prev_rpid=""; prev_total=0
drain() {
    local label=$1 name=$2 kind=$3 options=$4 keyed=$5 key t res rpid total ticks
    echo "part 1: drain of $n_msgs messages, $label ..." >&2
    reset_tables
    create_dest "$name" "$kind" "$options"
    key=NULL
    (( keyed )) && key="'k' || (g % $n_keys)"
    : >"$tmp/run/publish.sql"
    for (( t = 0; t < n_txns; t++ )); do
        echo "SELECT count(eo.publish('bench.drain', bench_payload(g), $key)) FROM generate_series($(( t * per + 1 )), $(( (t + 1) * per ))) AS g;" >>"$tmp/run/publish.sql"
    done
    psql_q -f "$tmp/run/publish.sql" >/dev/null
    psql_q -c "VACUUM ANALYZE eo.outbox" -c "CHECKPOINT" >/dev/null
    res=$(py drain --dsn "$dsn" --destination "$name" --expect "$n_msgs" --timeout 900) ||
        die "the drain poller failed"
    rpid=$(relay_pid) || die "no relay worker after the drain"
    total=$(proc_cpu_ticks "$rpid")
    set_relay off
    if [[ $rpid == "$prev_rpid" ]]; then ticks=$(( total - prev_total )); else ticks=$total; fi
    prev_rpid=$rpid; prev_total=$total
    cpu_us=$(awk -v t="$ticks" -v hz="$clk_tck" -v n="$n_msgs" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    parse_kv D_ "$res"
    [[ $D_done == 1 ]] || die "$label: not drained: $res (see $tmp/logs/server.log)"
    drain_s=$(elapsed "$D_t0" "$D_t_done")
    rate=$(awk -v n="$n_msgs" -v s="$drain_s" 'BEGIN { printf "%.0f", n / s }')
    printf '  %s: %s msg/s (drained in %s s), relay CPU %s us/msg\n' "$label" "$rate" "$drain_s" "$cpu_us" >&2
    drop_dest "$name"
}
# partition_counts FILE: per partition of read_topic's output, the records
# read and the highest offset + 1 (equal unless records were skipped).
partition_counts() {
    sed -E 's/^\{"partition":([0-9]+),"offset":([0-9]+),.*/\1 \2/' "$1" |
        awk '{ n[$1]++; if ($2 + 1 > end[$1]) end[$1] = $2 + 1 }
             END { for (p in n) printf "partition %s: %d records, offsets up to %d\n", p, n[p], end[p] }' | sort
}
# check_topic TOPIC LABEL [OPTIONS]: the topic holds each message once.
check_topic() {
    local got
    if ! read_topic "$1" "$n_msgs" "${@:3}" >"$tmp/run/$1.json"; then
        partition_counts "$tmp/run/$1.json" >&2
        die "$2: cannot read topic $1 back"
    fi
    got=$(count_ids "$tmp/run/$1.json")
    [[ $got == "$n_msgs $n_msgs" ]] || die "$2: topic $1 holds $got records / distinct ids, not $n_msgs"
    echo "  $1 holds the $n_msgs messages, each once" >&2
}

mock "topic drain_default $partitions 3"
mock "topic drain_keyed $partitions 3"
mock "topic drain_eos $partitions 3"
mock "topic latency $partitions 3"

drain "kafka, default mode" k_default kafka "\"bootstrap_servers\": \"$bootstrap\", \"topic\": \"drain_default\"" 0
rate_default=$rate; s_default=$drain_s; cpu_default=$cpu_us
check_topic drain_default "default mode"
drain "kafka, default mode, $n_keys keys" k_keyed kafka "\"bootstrap_servers\": \"$bootstrap\", \"topic\": \"drain_keyed\"" 1
rate_keyed=$rate; s_keyed=$drain_s; cpu_keyed=$cpu_us
check_topic drain_keyed "keyed"
drain "kafka, exactly_once" k_eos kafka "\"bootstrap_servers\": \"$bootstrap\", \"topic\": \"drain_eos\", \"exactly_once\": true" 0
rate_eos=$rate; s_eos=$drain_s; cpu_eos=$cpu_us
check_topic drain_eos "exactly_once" --read-committed
drain "notify" n_ref notify '"channel": "bench_drain"' 0
rate_notify=$rate; s_notify=$drain_s; cpu_notify=$cpu_us

# ============================================================ part 2
echo "part 2: latency at $lat_rate msg/s for ${lat_seconds}s ..." >&2
reset_tables
create_dest k_lat kafka "\"bootstrap_servers\": \"$bootstrap\", \"topic\": \"latency\""
set_relay on
sleep 1
expect=$(( lat_rate * lat_seconds + lat_clients ))
read_topic latency "$expect" --received >"$tmp/run/latency.json" 2>"$tmp/logs/latency_reader.log" &
reader_pid=$!
res=$(py publish-at --dsn "$dsn" --rate "$lat_rate" --seconds "$lat_seconds" --clients "$lat_clients" \
    --out "$tmp/run/commits.tsv") || die "the publishing client failed"
parse_kv P_ "$res"
wait "$reader_pid" || die "the consumer did not get the $expect records (see $tmp/logs/latency_reader.log)"
dres=$(py drain --dsn "$dsn" --destination k_lat --expect "$P_sent" --timeout 300) || die "the drain poller failed"
parse_kv D_ "$dres"
[[ $D_done == 1 ]] || die "latency run: not delivered: $dres"
set_relay off
# Per record: eo-id, timestamp (ms), received (s).
sed -E 's/.*"timestamp":([0-9]+).*\["eo-id","([^"]*)"\].*"received":([0-9.]+).*/\2 \1 \3/' \
    "$tmp/run/latency.json" >"$tmp/run/latency.txt"
# percentiles COLUMN: "n p50 p99 max" of commit -> column (ms).
percentiles() {
    awk -v col="$1" 'NR == FNR { commit[$1] = $2; next }
        ($1 in commit) { t = (col == 2) ? $2 / 1000 : $3; print (t - commit[$1]) * 1000 }' \
        FS='\t' "$tmp/run/commits.tsv" FS=' ' "$tmp/run/latency.txt" | sort -g |
    awk '{ a[NR] = $1 } END {
             if (NR == 0) { print "0 n/a n/a n/a"; exit }
             p50 = a[int((NR - 1) * 0.50) + 1]; p99 = a[int((NR - 1) * 0.99) + 1];
             printf "%d %.1f %.1f %.1f\n", NR, p50, p99, a[NR] }'
}
read -r prod_n prod_p50 prod_p99 prod_max <<<"$(percentiles 2)"
read -r recv_n recv_p50 recv_p99 recv_max <<<"$(percentiles 3)"
(( recv_n == P_timed && prod_n == P_timed )) ||
    die "matched $recv_n / $prod_n of $P_timed timed messages in the topic"
printf '  commit -> produced p50 %s, p99 %s, max %s ms; commit -> received p50 %s, p99 %s, max %s ms\n' \
    "$prod_p50" "$prod_p99" "$prod_max" "$recv_p50" "$recv_p99" "$recv_max" >&2
drop_dest k_lat

# ============================================================ report
out "## Summary"
out ""
out "| measure | kafka, default mode | kafka, default mode, $n_keys keys | kafka, exactly_once | notify (reference) |"
out "|---|---:|---:|---:|---:|"
out "| drain of $n_msgs messages: msg/s | **$rate_default** | **$rate_keyed** | **$rate_eos** | **$rate_notify** |"
out "| drained in | $s_default s | $s_keyed s | $s_eos s | $s_notify s |"
out "| relay worker CPU per message | $cpu_default µs | $cpu_keyed µs | $cpu_eos µs | $cpu_notify µs |"
out ""
out "| latency at $lat_rate msg/s, default mode ($P_timed messages) | p50 | p99 | max |"
out "|---|---:|---:|---:|"
out "| commit → produced (the record's timestamp, ms resolution) | $prod_p50 ms | $prod_p99 ms | $prod_max ms |"
out "| commit → received by a consumer | $recv_p50 ms | **$recv_p99 ms** | $recv_max ms |"
out ""
out "Drain: each backlog was published in $n_txns transactions with the relay disabled; times"
out "from enabling it to the poll of eo.stats that saw the destination drained; the relay"
out "worker's CPU time (user + system, /proc) over the drain, per message: a drain much"
out "slower than that CPU allows is waiting, not working. Each Kafka"
out "topic then held every message once (read back by eo-id; exactly_once with read_committed,"
out "which the mock does not enforce). The keyed drain has one message of a key on the wire"
out "at a time. Target of issue #15: 50,000 msg/s in the default mode: $(verdict "$rate_default" 50000)."
out "Latency: $P_timed messages, one per transaction from $lat_clients connections (publishes"
out "started late by p99 $P_late_p99_ms ms); commit: when the client's COMMIT returned. Kafka's"
out "acknowledgement comes between \"produced\" and \"received\"; the relay records the delivery"
out "after it."
out ""
report_end
[[ $result_file != /dev/null ]] && echo "results written to $result_file" >&2
exit 0
