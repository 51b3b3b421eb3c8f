#!/usr/bin/env bash
# relay_compare.sh: the relay of two builds of eo_processing, measured side
# by side in the same run: a baseline (a git ref, by default the last 0.4.0)
# and the working tree this script is in, uncommitted changes included.
#
#   1. Builds: each build is compiled and installed ("make install") into a
#      relocated copy of PostgreSQL of its own: /usr/lib/postgresql/15,
#      /usr/share/postgresql/15 and /usr/include/postgresql copied under
#      <work directory>/<side>/pg/usr/..., whose pg_config then reports the
#      copy's paths (any eo_processing files the copy inherited from the
#      system installation are removed first).  The baseline's source is
#      "git archive" of its commit; the new build's is every file of the
#      working tree that git tracks or would track (ignored build products
#      left out).
#   2. Measurements: relay_bench.sh (see its header: HTTP drain beside a wrk
#      ceiling, NOTIFY drain, commit -> LISTEN latency, sustained load with
#      the relay off and on, rows and WAL per delivered message), run with
#      EO_PG_BINDIR set to each copy, one group at a time, both builds per
#      group before the next, alternating which build goes first, each run
#      in a throwaway cluster of its own: both builds see the machine in
#      much the same state, whatever else runs on it.
#   3. Report: one markdown table, metric | baseline | new | new / baseline
#      | target, the machine (nproc, CPU, memory) and PostgreSQL's version;
#      on stdout and in test/bench/results/relay-compare-<timestamp>.md.
#      The targets are the new build's: HTTP drain >= 25,000 msg/s and >= 3x
#      the baseline, NOTIFY drain >= 150,000 msg/s, commit -> LISTEN p99 <
#      10 ms, TPS with the relay on >= 0.95 x off, backlog when the load
#      stops <= 2 s of publishing.
#
# The baseline by default: the newest commit on the first-parent line of
# HEAD (the successive tips of main) whose eo_processing.control says
# default_version = '0.4.0', found in git's history on every run.
#
# Usage (as root: servers run as "postgres", nginx and wrk come from
# Debian if missing; or as a user who can read /usr's PostgreSQL and has
# nginx and wrk; needs what relay_bench.sh needs, and make, gcc, the
# PostgreSQL server headers and libcurl's, as for building the extension):
#
#   test/bench/relay_compare.sh                     # about 5 minutes
#   BENCH_QUICK=1 test/bench/relay_compare.sh       # a smoke run, ~2 minutes
#   BENCH_BASELINE_REF=v0.3.0 test/bench/relay_compare.sh
#
# Environment:
#   BENCH_BASELINE_REF=<ref>       the baseline (default: found as above)
#   BENCH_BASELINE_VERSION=0.4.0   the default_version looked for when
#                                  BENCH_BASELINE_REF is not set
#   BENCH_WORKDIR=<dir>            where the PostgreSQL copies, sources and
#                                  logs go; kept, and its PostgreSQL copies
#                                  reused, on the next run (default: a new
#                                  temporary directory, removed at the end
#                                  unless the run fails)
#   BENCH_RELAY_GROUPS="http notify latency load"  which groups, in order
#   BENCH_QUICK=1 and every other BENCH_* setting of relay_bench.sh apply to
#   both builds alike.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=relay_compare
# shellcheck source=bench_lib.sh
. "$script_dir/bench_lib.sh"

# ------------------------------------------------------------------ settings
pg_major=15
baseline_ref=${BENCH_BASELINE_REF:-}
baseline_version=${BENCH_BASELINE_VERSION:-0.4.0}
workdir=${BENCH_WORKDIR:-}
groups=${BENCH_RELAY_GROUPS:-"http notify latency load"}
quick=${BENCH_QUICK:-0}
for g in $groups; do
    [[ $g =~ ^(http|notify|latency|load)$ ]] ||
        die "BENCH_RELAY_GROUPS must be a list of http, notify, latency, load"
done
[[ -n ${groups// /} ]] || die "BENCH_RELAY_GROUPS is empty"
has_group() { [[ " $groups " == *" $1 "* ]]; }
[[ -x $script_dir/relay_bench.sh ]] || die "missing $script_dir/relay_bench.sh"
for d in "/usr/lib/postgresql/$pg_major" "/usr/share/postgresql/$pg_major" /usr/include/postgresql; do
    [[ -d $d ]] || die "$d is missing (Debian's postgresql-$pg_major and postgresql-server-dev-$pg_major)"
done
command -v make >/dev/null 2>&1 || die "make is missing"

repo=$(git -C "$script_dir" rev-parse --show-toplevel 2>/dev/null) ||
    die "$script_dir is not in a git working tree"
git_() { git -C "$repo" "$@"; }

# control_version COMMIT: default_version of eo_processing.control there.
control_version() {
    git_ show "$1:eo_processing.control" 2>/dev/null |
        sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p"
}

# ------------------------------------------------------------------ baseline
if [[ -n $baseline_ref ]]; then
    old_commit=$(git_ rev-parse --verify -q "$baseline_ref^{commit}") ||
        die "BENCH_BASELINE_REF=$baseline_ref is not a commit of $repo"
else
    old_commit=""
    for c in $(git_ rev-list --first-parent HEAD); do
        if [[ $(control_version "$c") == "$baseline_version" ]]; then old_commit=$c; break; fi
    done
    [[ -n $old_commit ]] ||
        die "no commit on the first-parent line of HEAD has default_version = '$baseline_version' (set BENCH_BASELINE_REF)"
fi
old_version=$(control_version "$old_commit")
[[ -n $old_version ]] || die "$old_commit has no eo_processing.control with a default_version"
old_label="$old_version ($(git_ rev-parse --short "$old_commit"))"
old_desc="$(git_ log -1 --format='%h %cs "%s"' "$old_commit")"

new_version=$(sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" "$repo/eo_processing.control")
new_head=$(git_ log -1 --format='%h' HEAD)
new_desc="the working tree at $new_head"
if [[ -n $(git_ status --porcelain 2>/dev/null) ]]; then
    new_desc+=" with uncommitted changes or new files"
fi
new_label="$new_version ($new_desc)"

# ------------------------------------------------------------ work directory
if [[ -n $workdir ]]; then
    mkdir -p "$workdir" || die "cannot create $workdir"
    workdir=$(cd "$workdir" && pwd)
    keep_workdir=1
else
    workdir=$(mktemp -d "${TMPDIR:-/tmp}/eo_relay_compare.XXXXXX") || die "mktemp failed"
    keep_workdir=0
fi
chmod 755 "$workdir"            # the server user reads the PostgreSQL copies
compare_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if (( keep_workdir )); then
        echo "$bench_name: work directory kept: $workdir" >&2
    elif (( rc != 0 )); then
        echo "$bench_name: work directory kept for its logs: $workdir (remove it when done)" >&2
    else
        rm -rf -- "$workdir"
    fi
    exit "$rc"
}
trap compare_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$workdir/logs"

# pg_copy SIDE: sets prefix to a relocated copy of PostgreSQL for SIDE
# (made if missing), without any eo_processing file.
pg_copy() {
    prefix=$workdir/$1/pg
    if [[ ! -x $prefix/usr/lib/postgresql/$pg_major/bin/pg_config ]]; then
        rm -rf -- "$prefix"
        mkdir -p "$prefix/usr/lib/postgresql" "$prefix/usr/share/postgresql" "$prefix/usr/include"
        cp -a "/usr/lib/postgresql/$pg_major" "$prefix/usr/lib/postgresql/"
        cp -a "/usr/share/postgresql/$pg_major" "$prefix/usr/share/postgresql/"
        cp -a /usr/include/postgresql "$prefix/usr/include/"
    fi
    rm -rf -- "$prefix/usr/lib/postgresql/$pg_major/lib/eo_processing.so" \
              "$prefix/usr/lib/postgresql/$pg_major/lib/bitcode/eo_processing" \
              "$prefix/usr/lib/postgresql/$pg_major/lib/bitcode/eo_processing.index.bc"
    rm -f -- "$prefix/usr/share/postgresql/$pg_major/extension/"eo_processing[.-]*
}

# build SIDE: copies PostgreSQL, lays out SIDE's source (old: the baseline
# commit; new: the working tree), builds and installs it into the copy;
# sets bindir_<SIDE>.
build() {
    local side=$1 src=$workdir/$1/src log=$workdir/logs/build-$1.log pgc v
    pg_copy "$side"
    pgc=$prefix/usr/lib/postgresql/$pg_major/bin/pg_config
    [[ $("$pgc" --bindir) == "$prefix/usr/lib/postgresql/$pg_major/bin" ]] ||
        die "the copy's pg_config does not report the copy's paths ($("$pgc" --bindir))"
    rm -rf -- "$src"
    mkdir -p "$src"
    if [[ $side == old ]]; then
        git_ archive "$old_commit" | tar -x -C "$src"
    else
        git_ ls-files -z --cached --others --exclude-standard |
            (cd "$repo" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -x -C "$src"
    fi
    echo "$bench_name: building the $side build in $src ..." >&2
    { make -C "$src" -j"$(nproc)" PG_CONFIG="$pgc" && make -C "$src" PG_CONFIG="$pgc" install; } \
        >"$log" 2>&1 || { tail -n 30 "$log" >&2; die "the $side build failed (see $log)"; }
    v=$(sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" \
        "$prefix/usr/share/postgresql/$pg_major/extension/eo_processing.control")
    [[ -f $prefix/usr/lib/postgresql/$pg_major/lib/eo_processing.so && -n $v ]] ||
        die "the $side build did not install into $prefix"
    printf -v "bindir_$side" '%s' "$prefix/usr/lib/postgresql/$pg_major/bin"
}

t_start=$(now_s)
load_start=$(loadavg)
echo "$bench_name: baseline $old_desc; new: the working tree of $repo" >&2
build old
build new

# ------------------------------------------------------------------ measure
rm -f "$workdir/kv-old.txt" "$workdir/kv-new.txt"
# measure GROUP SIDE: relay_bench.sh for GROUP against SIDE's build.
measure() {
    local g=$1 side=$2 bindir log=$workdir/logs/$1-$2.log label
    bindir=bindir_$side
    if [[ $side == old ]]; then label=$old_label; else label=$new_label; fi
    echo "$bench_name: $g, $label ..." >&2
    if ! env -u PG_CONFIG EO_PG_BINDIR="${!bindir}" BENCH_RELAY_GROUPS="$g" \
            BENCH_KV_OUT="$workdir/kv-$side.txt" BENCH_NOTE="$label" \
            "$script_dir/relay_bench.sh" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "relay_bench.sh failed for $g, $label (see $log)"
    fi
    grep '^  ' "$log" >&2 || true     # its progress lines
}
i=0
for g in $groups; do
    if (( i % 2 == 0 )); then measure "$g" old; measure "$g" new
    else measure "$g" new; measure "$g" old; fi
    i=$(( i + 1 ))
done

# ------------------------------------------------------------------- report
# get SIDE KEY: the figure KEY of SIDE (the last one recorded), or "?".
get() {
    awk -v k="$2" 'index($0, k "=") == 1 { v = substr($0, length(k) + 2) }
                   END { print (v == "") ? "?" : v }' "$workdir/kv-$1.txt"
}
num() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; }
# times OLD NEW: NEW / OLD as "1.23×", or empty when either is not a number.
times() { if num "$1" && num "$2"; then echo "$(ratio "$2" "$1")×"; fi; }
# row METRIC KEY TARGET: a table row of figure KEY of both builds.
row() { out "| $1 | $(get old "$2") | $(get new "$2") | $(times "$(get old "$2")" "$(get new "$2")") | $3 |"; }
# check CONDITION KEY: "met" or "**missed**" for the new build's figure KEY
# (CONDITION: an awk expression of n, the new figure, and o, the baseline's).
check() {
    local o n
    o=$(get old "$2") n=$(get new "$2")
    if num "$n" && awk -v n="$n" -v o="$o" "BEGIN { exit !($1) }"; then echo "met"; else echo "**missed**"; fi
}
with_ceiling() {                # SIDE: the http drain as a fraction of wrk's figure
    local d w
    d=$(get "$1" http_rate) w=$(get "$1" wrk_rps)
    if num "$d" && num "$w"; then ratio "$d" "$w"; else echo "?"; fi
}

mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null || echo 0)
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
minutes=$(awk -v a="$t_start" -v b="$(now_s)" 'BEGIN { printf "%.1f", (b - a) / 60 }')
open_result_file relay-compare
mode="full"
[[ $quick == 1 ]] && mode="quick (BENCH_QUICK=1: small counts, seconds; not for comparing)"

out "# eo_processing relay: $old_label vs $new_label ($stamp)"
out ""
out "| machine | |"
out "|---|---|"
out "| CPU | ${cpu_model:-unknown}, nproc = $(nproc) |"
out "| memory | $(( mem_kb / 1024 )) MiB |"
out "| PostgreSQL | $(get new server_version) |"
out "| system | $(uname -sr) |"
has_group http && out "| receiver | $(get new nginx_version), POST /hook -> 200; ceiling by $(get new wrk_version) |"
out "| baseline | $old_desc |"
out "| new | $new_label; $new_head is of $(git_ log -1 --format=%cs HEAD) |"
out "| load average | $load_start at the start, $(loadavg) at the end (other work on the machine disturbs every figure) |"
out "| run | $mode; $minutes min with both builds; groups: $groups, both builds per group, alternating which goes first |"
out ""
out "| metric | $old_version | new | ratio | target |"
out "|---|---:|---:|---:|---|"
if has_group http; then
    row "HTTP drain: $(get new http_messages) signed messages, concurrency 16 (msg/s)" http_rate \
        "≥ 25,000 and ≥ 3× $old_version: $(check 'n >= 25000 && n >= 3 * o' http_rate)"
    row "ceiling: wrk against the same nginx, $(get new wrk_connections) keep-alive connections (req/s)" wrk_rps "(ceiling)"
    out "| HTTP drain ÷ ceiling | $(with_ceiling old) | $(with_ceiling new) | | |"
fi
if has_group notify; then
    row "NOTIFY drain: $(get new notify_messages) messages, one LISTEN client (msg/s, eo.stats)" notify_rate \
        "≥ 150,000: $(check 'n >= 150000' notify_rate)"
    row "NOTIFY drain: received by the LISTEN client (msg/s)" notify_recv_rate ""
fi
if has_group latency; then
    row "commit → LISTEN at $(get new lat_rate) msg/s: p50 (ms)" lat_p50 ""
    row "commit → LISTEN at $(get new lat_rate) msg/s: p99 (ms)" lat_p99 "< 10 ms: $(check 'n < 10' lat_p99)"
fi
if has_group load; then
    row "load, $(get new load_clients) clients for $(get new load_seconds) s, keyed: TPS, relay off" load_tps_off ""
    row "load: TPS, relay delivering over HTTP" load_tps_on ""
    row "load: TPS on ÷ off" load_ratio "≥ 0.95: $(check 'n >= 0.95' load_ratio)"
    row "load: backlog when it stops (messages)" load_backlog ""
    row "load: backlog in seconds of publishing" load_backlog_seconds "≤ 2 s: $(check 'n <= 2' load_backlog_seconds)"
    row "load: drain rate afterwards (msg/s)" load_drain_rate ""
fi
if has_group notify; then
    row "rows written per delivered message, notify" notify_rows_per_msg ""
    row "WAL bytes per delivered message, notify" notify_wal_per_msg ""
fi
if has_group http; then
    row "rows written per delivered message, http" http_rows_per_msg ""
    row "WAL bytes per delivered message, http" http_wal_per_msg ""
fi
out ""
out "Ratio: new ÷ $old_version (for latencies, backlogs, rows and WAL, lower is better)."
out "Drains are timed from turning eo.relay_enabled on to the eo.stats poll that shows the"
out "destination drained; rows and WAL per message cover the drain only (relay_bench.sh)."
out ""
out "| every message arrived? | $old_version | new |"
out "|---|---|---|"
for k in http_received notify_received lat_received load_received; do
    [[ $(get new "$k") == "?" && $(get old "$k") == "?" ]] && continue
    case $k in
        http_received) what="HTTP drain: distinct messages at nginx" ;;
        notify_received) what="NOTIFY drain: distinct messages at the listener" ;;
        lat_received) what="latency: distinct messages at the listener" ;;
        *) what="load: distinct messages at nginx" ;;
    esac
    out "| $what | $(get old "$k") | $(get new "$k") |"
done
out ""
if [[ $result_file != /dev/null ]]; then
    {
        echo "## Every figure recorded (relay_bench.sh key=value, in the order measured)"
        echo ""
        for side in old new; do
            if [[ $side == old ]]; then echo "### $old_label"; else echo "### $new_label"; fi
            echo ""
            echo '```'
            cat "$workdir/kv-$side.txt"
            echo '```'
            echo ""
        done
    } >>"$result_file"
    echo "results written to $result_file" >&2
fi
