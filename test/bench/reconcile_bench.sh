#!/usr/bin/env bash
# bench_lib.sh reads bench_name, locale, pg_config, sync_commit and
# seconds (SC2034).
# shellcheck disable=SC2034
#
# reconcile_bench.sh: how long does eo.reconcile() take on a million rows
# per side, against the FULL JOIN one would write by hand?  In one
# throwaway cluster (reconcile_setup.sql):
#
#   payments / settlement        BENCH_ROWS rows each, no unique index on
#                                the key (duplicates possible), settlement
#                                in random order, a sprinkling of every
#                                problem kind (missing on either side,
#                                mismatch, duplicated on either side)
#   payments_pk / settlement_pk  the same rows without duplicates, each
#                                with a primary key on id
#
# For both pairs it times, BENCH_ROUNDS times in alternating order:
#
#   hand-written   SELECT key, problem, to_jsonb(l), to_jsonb(r) FROM l FULL
#                  JOIN r ON l.id = r.id WHERE <missing or any column
#                  IS DISTINCT FROM> (it does not detect duplicates)
#   eo.reconcile   SELECT * FROM eo.reconcile(l, r, 'id')
#
# and reports the medians and their ratio, checks that eo.reconcile found
# exactly the planted problems, and prints the plan of the query
# eo.reconcile runs (through auto_explain): a single hash full join.
#
# Usage (one command, as root or as a normal user; the extension must be
# built and installed with "make install"):
#
#   test/bench/reconcile_bench.sh
#
# Environment:
#   BENCH_ROWS=1000000        rows per side
#   BENCH_EVERY=2000          one planted problem every BENCH_EVERY ids
#                             (each kind BENCH_ROWS / (5 * BENCH_EVERY) times)
#   BENCH_ROUNDS=3            timed runs of each query; the median is reported
#   BENCH_WORK_MEM=           work_mem of the timed sessions (default: the
#                             server default, 4MB)
#   BENCH_JIT=                jit of the timed sessions, on or off (default:
#                             the server default)
#   BENCH_LOCALE=C            locale of the throwaway cluster
#   PG_CONFIG=pg_config       which PostgreSQL installation to use
#
# Results go to stdout and to test/bench/results/reconcile-<timestamp>.md.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=reconcile_bench
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

# ------------------------------------------------------------------ settings
rows=${BENCH_ROWS:-1000000}
every=${BENCH_EVERY:-2000}
rounds=${BENCH_ROUNDS:-3}
work_mem=${BENCH_WORK_MEM:-}
jit=${BENCH_JIT:-}
locale=${BENCH_LOCALE:-C}
pg_config=${PG_CONFIG:-pg_config}

[[ $rows =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROWS must be a positive integer"
[[ $every =~ ^[1-9][0-9]*$ ]] || die "BENCH_EVERY must be a positive integer"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
[[ -z $work_mem || $work_mem =~ ^[1-9][0-9]*(kB|MB|GB)$ ]] || die "BENCH_WORK_MEM must be like 64MB"
[[ -z $jit || $jit == on || $jit == off ]] || die "BENCH_JIT must be on or off"
(( rows >= 5 * every )) || die "BENCH_ROWS must be at least 5 * BENCH_EVERY"
sync_commit=""                  # check_sync_commit: the server default
seconds=5
check_sync_commit
check_installation
[[ -f $pkglibdir/auto_explain.so ]] || die "$pkglibdir/auto_explain.so is missing (contrib): needed to show eo.reconcile's plan"
require_files reconcile_setup.sql

# ------------------------------------------------------- who runs the server
setup_server_user
make_tmp
prepare_tmp "" reconcile_setup.sql

# ---------------------------------------------------------------- the cluster
pick_port
run_initdb

{
    echo "# --- reconcile_bench.sh"
    echo "port = $port"
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$tmp'"
    echo "shared_preload_libraries = 'eo_processing'"
    echo "eo.relay_enabled = off"
    # all four tables stay in shared buffers
    echo "shared_buffers = 1GB"
    echo "max_wal_size = 8GB"
    echo "checkpoint_timeout = 30min"
    echo "autovacuum = off"
} >>"$tmp/data/postgresql.conf"

record_build                    # which build is measured
start_server
echo "loading $rows rows per side ..." >&2
psql_q -v rows="$rows" -v every="$every" -f "$tmp/scripts/reconcile_setup.sql" \
    >"$tmp/logs/setup.log" 2>&1 || { cat "$tmp/logs/setup.log" >&2; die "setup failed"; }
psql_q -c CHECKPOINT

# ------------------------------------------------------------ machine report
open_result_file reconcile
report_machine_head reconcile
report_machine_server
session_settings=""
[[ -n $work_mem ]] && session_settings+="SET work_mem = '$work_mem'; "
[[ -n $jit ]] && session_settings+="SET jit = $jit; "
out "| work_mem / jit | $(psql_q -At -c "${session_settings}SHOW work_mem") / $(psql_q -At -c "${session_settings}SHOW jit") (BENCH_WORK_MEM, BENCH_JIT) |"
out "| data | $rows rows per side; $(( rows / (5 * every) )) of each problem kind; $(psql_q -At -c "SELECT pg_size_pretty(pg_total_relation_size('payments'))") + $(psql_q -At -c "SELECT pg_size_pretty(pg_total_relation_size('settlement'))") |"
out "| load average at start | $(loadavg) |"
out ""

# ------------------------------------------------------------------ queries
handwritten() {             # local remote -> the query
    cat <<EOF
SELECT coalesce(l.id, r.id)::text AS key,
       CASE WHEN l.id IS NULL THEN 'missing_local'
            WHEN r.id IS NULL THEN 'missing_remote'
            ELSE 'mismatch' END AS problem,
       to_jsonb(l) AS local, to_jsonb(r) AS remote
  FROM $1 AS l FULL JOIN $2 AS r ON l.id = r.id
 WHERE l.id IS NULL OR r.id IS NULL
    OR (l.amount, l.currency, l.status, l.customer, l.created_at)
       IS DISTINCT FROM (r.amount, r.currency, r.status, r.customer, r.created_at)
EOF
}
reconcile() {               # local remote -> the query
    echo "SELECT * FROM eo.reconcile('$1', '$2', 'id')"
}

# time_query SQL: runs SQL once in a new session (results discarded), sets
# MS to the time psql reports.
time_query() {
    local log="$tmp/logs/timing.log"
    psql_q -o /dev/null -c "${session_settings}" -c '\timing on' -c "$1" >"$log" 2>&1 ||
        { cat "$log" >&2; die "query failed: $1"; }
    MS=$(awk '/^Time: / { t = $2 } END { print t }' "$log")
    [[ -n $MS ]] || { cat "$log" >&2; die "no timing in psql's output"; }
}

# ----------------------------------------------------------- correctness
expect=$(( rows / (5 * every) ))
check_counts() {            # local remote kinds... -> dies on a wrong count
    local l=$1 r=$2 got want
    shift 2
    got=$(psql_q -At -c "SELECT string_agg(problem || '=' || n, ' ' ORDER BY problem)
                           FROM (SELECT problem, count(*) AS n FROM eo.reconcile('$l', '$r', 'id')
                                  GROUP BY problem) x")
    want=$(printf '%s\n' "$@" | sort | sed "s/\$/=$expect/" | paste -sd' ')
    [[ $got == "$want" ]] || die "eo.reconcile($l, $r): found '$got', planted '$want'"
    echo "eo.reconcile($l, $r) found exactly the planted problems: $got" >&2
}
check_counts payments settlement duplicate_local duplicate_remote mismatch missing_local missing_remote
check_counts payments_pk settlement_pk mismatch missing_local missing_remote

# ------------------------------------------------------------------ timing
pairs=("payments settlement" "payments_pk settlement_pk")
declare -A runs             # "pair,kind" -> space-separated milliseconds
echo "warmup ..." >&2
for p in "${pairs[@]}"; do
    read -r l r <<<"$p"
    time_query "$(handwritten "$l" "$r")"
    time_query "$(reconcile "$l" "$r")"
done
echo "measuring: $rounds round(s) of 4 queries ..." >&2
for (( i = 1; i <= rounds; i++ )); do
    for p in "${pairs[@]}"; do
        read -r l r <<<"$p"
        # alternate which query runs first
        if (( i % 2 )); then order=(hand eo); else order=(eo hand); fi
        for kind in "${order[@]}"; do
            if [[ $kind == hand ]]; then time_query "$(handwritten "$l" "$r")"
            else time_query "$(reconcile "$l" "$r")"; fi
            runs["$p,$kind"]+="$MS "
            raw_rows+=("| $i | $l / $r | $kind | $MS |")
            printf '  round %d, %-28s %-5s %10.1f ms\n' "$i" "$l / $r" "$kind" "$MS" >&2
        done
    done
done

out "## eo.reconcile vs a hand-written FULL JOIN (median of $rounds, ms)"
out ""
out "| tables | unique index on id | hand-written FULL JOIN | eo.reconcile | eo.reconcile / hand-written |"
out "|---|---|---:|---:|---:|"
for p in "${pairs[@]}"; do
    read -r l r <<<"$p"
    h=$(median <<<"${runs[$p,hand]}")
    e=$(median <<<"${runs[$p,eo]}")
    if [[ $l == *_pk ]]; then u="both sides"; else u="neither side"; fi
    out "| $l / $r | $u | $(fmt "$h") | $(fmt "$e") | $(ratio "$e" "$h") |"
done
out ""
out "The hand-written query finds missing and mismatched keys only: a duplicated key"
out "goes unnoticed (or shows up as several mismatches).  eo.reconcile also counts"
out "each key on each side that has no unique index on it (a window count, which"
out "sorts that side), and reports duplicates once per key and side."
out ""

# ------------------------------------------------------------------ plans
# The plan of the query eo.reconcile runs, as auto_explain logs it (costs
# only, not executed twice).
reconcile_plan() {          # local remote -> the plan lines
    psql_q -c "LOAD 'auto_explain'" -c "SET auto_explain.log_min_duration = 0" \
        -c "SET auto_explain.log_nested_statements = on" -c "SET client_min_messages = log" \
        -c "${session_settings}" -o /dev/null -c "$(reconcile "$1" "$2")" 2>&1 |
        awk '/^[A-Z]+:  / { inlog = ($0 ~ /^LOG:  duration: .* plan:$/); main = 0; plan = 0; fmt = 0; next }
             !inlog { next }
             /format\(/ { fmt = 1 }
             /WITH c AS/ && !fmt { main = 1 }
             main && /\(cost=/ { plan = 1 }
             main && plan { print }'
}
for p in "${pairs[@]}"; do
    read -r l r <<<"$p"
    plan=$(reconcile_plan "$l" "$r")
    [[ -n $plan ]] || die "no plan of eo.reconcile's query in auto_explain's output"
    joins=$(grep -oE '(Hash|Merge) (Full |Left |Right |Anti |Semi )?Join|Nested Loop' <<<"$plan" | sort | uniq -c | sed 's/^ *//' | paste -sd, -)
    out "### Plan of the query eo.reconcile('$l', '$r', 'id') runs"
    out ""
    out "Join nodes: $joins."
    out ""
    out '```'
    while IFS= read -r line; do out "$line"; done <<<"$plan"
    out '```'
    out ""
done
out "### Plan of the hand-written query (payments / settlement)"
out ""
out '```'
while IFS= read -r line; do out "$line"; done < <(psql_q -At -c "${session_settings}" -c "EXPLAIN $(handwritten payments settlement)")
out '```'
out ""

report_end
append_raw_runs "| round | tables | query | ms |" "|---:|---|---|---:|"
echo "results: $result_file" >&2
