# shellcheck shell=bash
# The caller sets the variables the functions read (SC2154) and reads the
# ones they set (SC2034); as_pg is defined in setup_server_user (SC2317).
# shellcheck disable=SC2154,SC2034,SC2317
#
# bench_lib.sh: what inbox_bench.sh and outbox_bench.sh have in common, from
# the installation checks to the throwaway cluster, the pgbench runs with
# their server CPU accounting and the report helpers.  Sourced, not run;
# the caller sets bench_name (e.g. inbox_bench) and script_dir first, and
# later the variables each function names in its header.

# die MESSAGE: print "<bench_name>: MESSAGE" on stderr and exit 1.
die() { echo "$bench_name: $*" >&2; exit 1; }

# check_clients_list: every word of $clients_list is a positive integer.
check_clients_list() {
    local c
    for c in $clients_list; do
        [[ $c =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENTS must be positive integers"
    done
}

# check_sync_commit: validates $sync_commit, sets sync_label (for the report)
# and warmup (seconds of each warmup run, from $seconds).
check_sync_commit() {
    case "$sync_commit" in
        "") sync_label="server default; BENCH_SYNC_COMMIT=off runs the same table CPU-bound" ;;
        on|off|local) sync_label="set by BENCH_SYNC_COMMIT=$sync_commit" ;;
        *) die "BENCH_SYNC_COMMIT must be on, off or local" ;;
    esac
    # A short warmup of every workload before measuring.
    warmup=$(( seconds / 5 )); (( warmup >= 1 )) || warmup=1; (( warmup <= 5 )) || warmup=5
}

# default_pg_config: the pg_config to use: $PG_CONFIG if set, else the one
# of $EO_PG_BINDIR (a relocated PostgreSQL, as in scripts/lib.sh), else
# pg_config from PATH.
default_pg_config() {
    if [[ -n ${PG_CONFIG:-} ]]; then echo "$PG_CONFIG"
    elif [[ -n ${EO_PG_BINDIR:-} ]]; then echo "$EO_PG_BINDIR/pg_config"
    else echo pg_config; fi
}

# check_installation: finds $pg_config's PostgreSQL (sets bindir, pkglibdir,
# sharedir) and checks that eo_processing is installed there.
check_installation() {
    local prog
    command -v "$pg_config" >/dev/null 2>&1 || die "$pg_config not found (set PG_CONFIG)"
    bindir=$("$pg_config" --bindir)
    pkglibdir=$("$pg_config" --pkglibdir)
    sharedir=$("$pg_config" --sharedir)
    if [[ ! -f $pkglibdir/eo_processing.so ]]; then
        echo "$bench_name: $pkglibdir/eo_processing.so is missing:" >&2
        echo "  build and install the extension first: make && sudo make install" >&2
        exit 1
    fi
    [[ -f $sharedir/extension/eo_processing.control ]] ||
        die "$sharedir/extension/eo_processing.control is missing: run make install"
    for prog in initdb pg_ctl postgres psql pgbench; do
        [[ -x $bindir/$prog ]] || die "$bindir/$prog not found"
    done
}

# require_files FILE...: each FILE exists in $script_dir.
require_files() {
    local f
    for f in "$@"; do
        [[ -f $script_dir/$f ]] || die "missing $script_dir/$f"
    done
}

# setup_server_user: as root the server runs as "postgres"; defines as_pg
# (run a command as the server user) and sets tmp_base.  Also keeps the
# caller's libpq settings away from our cluster.
setup_server_user() {
    if (( EUID == 0 )); then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the server"
        command -v runuser >/dev/null 2>&1 || die "running as root needs runuser"
        as_pg() { runuser -u postgres -- env HOME="$tmp" "$@"; }
        tmp_base=${BENCH_TMPDIR:-/tmp}
    else
        as_pg() { "$@"; }
        tmp_base=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
    fi
    unset PGSERVICE PGSERVICEFILE PGOPTIONS PGPASSWORD PGPASSFILE PGSSLMODE \
          PGHOSTADDR PGTARGETSESSIONATTRS PGREQUIRESSL PGCONNECT_TIMEOUT PGAPPNAME \
          PGDATA PGTZ PGCLIENTENCODING 2>/dev/null || true
}

# cleanup: the EXIT trap.  Calls the caller's cleanup_before_stop (if
# defined), stops the server if $started, calls cleanup_after_stop RC (if
# defined), removes $tmp and exits with the original status.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if declare -F cleanup_before_stop >/dev/null; then cleanup_before_stop || true; fi
    if (( started )); then
        (cd "$tmp" && as_pg "$bindir/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null 2>&1) || true
    fi
    if declare -F cleanup_after_stop >/dev/null; then cleanup_after_stop "$rc" || true; fi
    rm -rf -- "$tmp"
    exit "$rc"
}

# make_tmp: creates the temporary directory $tmp (eo_<bench_name>.XXXXXX in
# $tmp_base) and installs the traps that remove it.
make_tmp() {
    tmp=$(mktemp -d "$tmp_base/eo_$bench_name.XXXXXX") || die "mktemp failed"
    started=0
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# prepare_tmp "EXTRA_DIRS" FILE...: makes $tmp the server user's, enters it,
# creates $tmp/scripts, $tmp/logs and EXTRA_DIRS (space-separated names) and
# copies FILEs from $script_dir to $tmp/scripts.
prepare_tmp() {
    local d f dirs=("$tmp/scripts" "$tmp/logs")
    for d in $1; do dirs+=("$tmp/$d"); done
    shift
    chmod 700 "$tmp"
    if (( EUID == 0 )); then chown postgres: "$tmp"; fi
    cd "$tmp" || exit               # a directory the server user can enter
    mkdir "${dirs[@]}"
    for f in "$@"; do cp "$script_dir/$f" "$tmp/scripts/"; done
    if (( EUID == 0 )); then chown -R postgres: "${dirs[@]}"; fi
    # unix socket path must fit in sun_path (107 bytes)
    (( ${#tmp} < 80 )) || die "temporary directory path too long for a unix socket: $tmp"
}

# port_in_use PORT: true if a server already listens on PORT.
port_in_use() {
    local p=$1
    [[ -e /tmp/.s.PGSQL.$p || -e /var/run/postgresql/.s.PGSQL.$p ]] && return 0
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Hltn "sport = :$p" 2>/dev/null) ]] && return 0
    fi
    return 1
}

# pick_port: sets port to a random free port.
pick_port() {
    local p
    port=""
    for _ in $(seq 1 50); do
        p=$(( 20000 + RANDOM % 30000 ))
        if ! port_in_use "$p"; then port=$p; break; fi
    done
    [[ -n $port ]] || die "no free port found"
}

# run_initdb: creates the cluster in $tmp/data (locale $locale).
run_initdb() {
    echo "initdb in $tmp/data ..." >&2
    as_pg "$bindir/initdb" -D "$tmp/data" -U bench -A trust -E UTF8 --locale="$locale" \
        --no-sync >"$tmp/logs/initdb.log" 2>&1 || { cat "$tmp/logs/initdb.log" >&2; die "initdb failed"; }
}

# server_conf PRELOAD: the settings every benchmark's cluster gets, for
# $tmp/data/postgresql.conf: our port and socket only, PRELOAD as
# shared_preload_libraries, no checkpoint in the middle of a run (each run
# starts after CHECKPOINT), and $sync_commit if set.
server_conf() {
    echo "# --- $bench_name.sh"
    echo "port = $port"
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$tmp'"
    echo "shared_preload_libraries = '$1'"
    echo "shared_buffers = 256MB"
    echo "max_wal_size = 8GB"
    echo "checkpoint_timeout = 30min"
    [[ -n $sync_commit ]] && echo "synchronous_commit = $sync_commit"
    true
}

# so_fingerprint: hash and install time of the installed eo_processing.so.
# Which build is measured: the server maps the library once, at start
# (shared_preload_libraries), so a later "make install" does not change
# what a run measures; report_end notes it if it happens.
so_fingerprint() {
    local f="$pkglibdir/eo_processing.so"
    echo "sha256 $(sha256sum "$f" 2>/dev/null | cut -c1-12), installed $(date -r "$f" '+%Y-%m-%d %H:%M:%S' 2>/dev/null)"
}

# record_build: sets so_at_start and repo_state (the source tree's commit).
record_build() {
    so_at_start=$(so_fingerprint)
    repo_state=$(git -C "$script_dir" log -1 --date=format:'%Y-%m-%d %H:%M' \
        --format='commit %h of %cd' 2>/dev/null || true)
    if [[ -n $repo_state ]] && [[ -n $(git -C "$script_dir" status --porcelain --untracked-files=no \
            -- ':/' ':(top,exclude)test/bench' 2>/dev/null) ]]; then
        repo_state+=" (+ uncommitted changes)"
    fi
}

# start_server: exports the libpq settings of our cluster, starts it and
# sets started and pm_pid (the postmaster).
start_server() {
    export PGHOST="$tmp" PGPORT="$port" PGUSER=bench PGDATABASE=postgres
    as_pg "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/logs/server.log" -w -t 60 start >/dev/null 2>&1 ||
        { tail -n 30 "$tmp/logs/server.log" >&2 || true; die "server did not start"; }
    started=1
    pm_pid=$(head -n 1 "$tmp/data/postmaster.pid")
}

# psql_q ARGS...: quiet psql as the server user, stopping at the first error.
psql_q() { as_pg "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

# run_setup FILE: runs $tmp/scripts/FILE (the schema) once.
run_setup() {
    psql_q -f "$tmp/scripts/$1" >"$tmp/logs/setup.log" 2>&1 ||
        { cat "$tmp/logs/setup.log" >&2; die "setup failed"; }
}

# open_result_file KIND: sets results_dir, stamp and result_file
# (results/KIND-<stamp>.md, or /dev/null if it cannot be written).
open_result_file() {
    results_dir="$script_dir/results"
    stamp=$(date +%Y%m%d-%H%M%S)
    mkdir -p "$results_dir" 2>/dev/null || true
    result_file="$results_dir/$1-$stamp.md"
    if ! touch "$result_file" 2>/dev/null; then
        echo "$bench_name: cannot write $result_file; results go to stdout only" >&2
        result_file=/dev/null
    fi
}

# out LINE: prints LINE to stdout and appends it to the result file.
out() { printf '%s\n' "$*" | tee -a "$result_file"; }

# loadavg: the 1, 5 and 15 minute load averages.
loadavg() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null; }

# report_machine_head KIND: the report's title and the first rows of its
# machine table (host to source tree).
report_machine_head() {
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
    cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
    server_version=$(psql_q -At -c "SELECT version()")
    eo_version=$(psql_q -At -c "SELECT extversion FROM pg_extension WHERE extname = 'eo_processing'")
    fs=$(df -PT "$tmp" 2>/dev/null | awk 'NR==2 {print $2 " on " $1}')
    out "# eo_processing $1 benchmark ($stamp)"
    out ""
    out "| machine | |"
    out "|---|---|"
    out "| host | $(uname -n) ($(uname -sr)) |"
    out "| CPU | ${cpu_model:-unknown}, nproc = $(nproc) |"
    out "| memory | $(( mem_kb / 1024 )) MiB |"
    out "| PostgreSQL | $server_version |"
    out "| eo_processing | $eo_version: $pkglibdir/eo_processing.so, $so_at_start |"
    if [[ -n $repo_state ]]; then
        out "| source tree | $repo_state (the installed library may come from another state) |"
    fi
}

# report_machine_server: the machine table's data directory,
# synchronous_commit (also sets sync_value) and shared_buffers rows.
report_machine_server() {
    out "| data directory | $tmp/data ($fs) |"
    sync_value=$(psql_q -At -c 'SHOW synchronous_commit')
    echo "synchronous_commit = $sync_value ($sync_label)" >&2
    out "| synchronous_commit | **$sync_value** ($sync_label) |"
    out "| shared_buffers | $(psql_q -At -c 'SHOW shared_buffers') |"
}

# Server CPU time: when a backend exits, the postmaster reaps it and the
# kernel adds the backend's user+system time to the postmaster's cutime and
# cstime.  The difference across a pgbench run (whose backends all exit at
# its end) is the CPU the server spent on that run, whatever else runs on
# the machine: a measure that other load disturbs much less than TPS.
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
run_no=0
raw_rows=()

# reaped_cpu_ticks: cutime + cstime of the postmaster.
reaped_cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$pm_pid/stat" 2>/dev/null || echo 0
}

# wait_backends_reaped: until no client backend (live or zombie) is left;
# client backends are the postmaster's children whose "ps" line matches
# $client_backend_re.
wait_backends_reaped() {
    local i
    for (( i = 0; i < 100; i++ )); do
        # (pgrep cannot match a process state: zombies count too)
        # shellcheck disable=SC2009
        ps -o stat=,args= --ppid "$pm_pid" 2>/dev/null |
            grep -Eq "^Z|$client_backend_re" || return 0
        sleep 0.05
    done
}

# next_run_log WORKLOAD CLIENTS: counts the run (run_no) and sets PGB_LOG,
# its log file.
next_run_log() {
    run_no=$(( run_no + 1 ))
    PGB_LOG="$tmp/logs/run-$run_no-$1-c$2.log"
}

# measure_pgbench WORKLOAD CLIENTS SECONDS [pgbench args...]: runs
# $tmp/scripts/WORKLOAD.pgbench (-M prepared, -j min(clients, 2)), appending
# to $PGB_LOG; sets TPS LAT XACTS FAILED and CPU_US (server CPU µs per
# transaction); dies if pgbench fails or a transaction failed.  If the
# caller defines on_pgbench_end, it is called as soon as pgbench returns.
measure_pgbench() {
    local w=$1 c=$2 secs=$3 j cpu0 cpu1
    shift 3
    j=$(( c < 2 ? c : 2 ))
    wait_backends_reaped
    cpu0=$(reaped_cpu_ticks)
    if ! as_pg "$bindir/pgbench" -n -M prepared -c "$c" -j "$j" -T "$secs" \
            -D n=0 "$@" -f "$tmp/scripts/$w.pgbench" >>"$PGB_LOG" 2>&1; then
        cat "$PGB_LOG" >&2
        die "pgbench failed ($w, $c clients)"
    fi
    # what the caller reads the moment the load stops (before the wait)
    if declare -F on_pgbench_end >/dev/null; then on_pgbench_end; fi
    wait_backends_reaped
    cpu1=$(reaped_cpu_ticks)
    TPS=$(awk '/^tps = / {print $3; exit}' "$PGB_LOG")
    LAT=$(awk '/^latency average = / {print $4; exit}' "$PGB_LOG")
    XACTS=$(awk -F': ' '/^number of transactions actually processed/ {print $2; exit}' "$PGB_LOG")
    XACTS=${XACTS%%/*}
    FAILED=$(awk '/^number of failed transactions/ {print $5; exit}' "$PGB_LOG")
    [[ -n $TPS ]] || { cat "$PGB_LOG" >&2; die "could not read TPS from pgbench output"; }
    [[ -z $FAILED || $FAILED == 0 ]] || { cat "$PGB_LOG" >&2; die "$w had failed transactions"; }
    CPU_US=$(awk -v t=$(( cpu1 - cpu0 )) -v hz="$clk_tck" -v x="$XACTS" \
        'BEGIN { if (x > 0) printf "%.1f", t / hz * 1e6 / x; else print 0 }')
}

# parse_kv PREFIX LINE: sets PREFIX<key> for every key=value of LINE (and
# unsets the other PREFIX variables).
parse_kv() {
    local kv v
    for v in $(compgen -v "$1"); do unset "$v"; done
    for kv in $2; do printf -v "$1${kv%%=*}" '%s' "${kv#*=}"; done
}
# median: the median of the numbers on stdin (space or newline separated).
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {
    if (NR == 0) print 0; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
# ratio A B: A / B with two decimals, n/a if B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# fmt X: X rounded to an integer.
fmt() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
# fmt1 X: X with one decimal.
fmt1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }

# report_end: the closing load average, and a note if eo_processing.so was
# reinstalled (another build, not only a new mtime) during the run.
report_end() {
    out "Load average at the end: $(loadavg)."
    if [[ $(so_fingerprint | cut -d, -f1) != "${so_at_start%%,*}" ]]; then
        out ""
        out "Note: eo_processing.so was reinstalled during this run ($(so_fingerprint)); the"
        out "server kept the library it loaded at start ($so_at_start)."
    fi
    out ""
}

# append_raw_runs HEADER ALIGNMENT: appends the table of $raw_rows to the
# result file.
append_raw_runs() {
    {
        echo "## Raw runs (in execution order)"
        echo ""
        echo "$1"
        echo "$2"
        printf '%s\n' "${raw_rows[@]}"
        echo ""
    } >>"$result_file"
}

# ------------------------------------------------------------------ the relay
# sql1 SQL: one value (or rows) of SQL, unaligned, as the server user.
sql1() { psql_q -At -c "$1"; }

# ge A B: true if A >= B (numbers).
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
# verdict RESULT TARGET: "met" if RESULT >= TARGET, else "**missed**".
verdict() { if ge "$1" "$2"; then echo "met"; else echo "**missed**"; fi; }
# now_s: the time in seconds since the epoch, with nanoseconds.
now_s() { date +%s.%N; }
# elapsed T0 T1: T1 - T0 with two decimals.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# relay_pid: prints the pid of this database's relay worker (waits up to
# 10 s for it to start); false if none.
relay_pid() {
    local i pid
    for (( i = 0; i < 100; i++ )); do
        pid=$(sql1 "SELECT pid FROM eo.relay_status WHERE datname = current_database() AND pid IS NOT NULL AND pid <> 0")
        [[ -n $pid ]] && { echo "$pid"; return 0; }
        sleep 0.1
    done
    return 1
}

# set_relay on|off: ALTER SYSTEM SET eo.relay_enabled + reload, then wait
# for the worker to see it.
set_relay() {
    psql_q -c "ALTER SYSTEM SET eo.relay_enabled = $1" -c "SELECT pg_reload_conf()" >/dev/null
    sleep 0.3
    [[ $(sql1 "SHOW eo.relay_enabled") == "$1" ]] || die "eo.relay_enabled did not become $1"
}

# proc_cpu_ticks PID: utime + stime of a live process (0 if it is gone).
proc_cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ------------------------------------------------------ the LISTEN client
# outbox_listener.py listen, in the background, on channel "bench".  The
# caller sets python and listen_dsn (best a role of its own, so that its
# backend is not taken for a pgbench client's by wait_backends_reaped),
# and has $tmp/run and $tmp/scripts/outbox_listener.py.
listener_pid=""             # the runuser/python process of a running listener
listener_n=0

# start_listener NAME IDLE_S MAX_S: starts the listener and waits until its
# LISTEN is in effect; it writes what it receives to L_OUT, its output to
# L_LOG, and stops IDLE_S seconds after the last notification once told
# how many to expect (finish_listener), or after MAX_S.
start_listener() {
    local name=$1 idle=$2 max=$3 i
    listener_n=$(( listener_n + 1 ))
    L_OUT="$tmp/run/listen-$listener_n-$name.tsv"
    L_LOG="$tmp/logs/listen-$listener_n-$name.log"
    rm -f "$tmp/run/ready" "$tmp/run/expect"
    as_pg "$python" "$tmp/scripts/outbox_listener.py" listen --dsn "$listen_dsn" --channel bench \
        --out "$L_OUT" --ready-file "$tmp/run/ready" --expect-file "$tmp/run/expect" \
        --idle "$idle" --max-seconds "$max" >"$L_LOG" 2>&1 &
    listener_pid=$!
    for (( i = 0; i < 200; i++ )); do
        [[ -s $tmp/run/ready ]] && return 0
        kill -0 "$listener_pid" 2>/dev/null || break
        sleep 0.05
    done
    cat "$L_LOG" >&2
    die "the listener did not start"
}

# finish_listener COUNT: tells the listener to expect COUNT notifications
# and waits for it to write its file.
finish_listener() {
    echo "$1" >"$tmp/run/expect.tmp"
    chmod 644 "$tmp/run/expect.tmp"
    mv "$tmp/run/expect.tmp" "$tmp/run/expect"
    wait "$listener_pid" || { cat "$L_LOG" >&2; die "the listener failed"; }
    listener_pid=""
}

# stop_listener: stops a running listener at once (for cleanup).
stop_listener() {
    [[ -n $listener_pid ]] || return 0
    # the python process itself (its pid is in the ready file)
    if [[ -s $tmp/run/ready ]]; then
        kill -TERM "$(head -n 1 "$tmp/run/ready")" 2>/dev/null || true
    fi
    wait "$listener_pid" 2>/dev/null || true
    listener_pid=""
}

# listener_analyze FILE [PGBENCH_LOGS...]: outbox_listener.py analyze of a
# listener's FILE (matched with pgbench's per-transaction logs if given);
# sets ANALYSIS (its key=value line) and A_<key> for each of its keys.
listener_analyze() {
    local f=$1 line kv
    shift
    unset "${!A_@}"
    local args=(analyze --file "$f")
    (( $# > 0 )) && args+=(--pgbench-log "$@")
    line=$(as_pg "$python" "$tmp/scripts/outbox_listener.py" "${args[@]}") ||
        die "analysis of $f failed"
    ANALYSIS="$line"
    for kv in $line; do
        printf -v "A_${kv%%=*}" '%s' "${kv#*=}"
    done
}

# ----------------------------------------------------------------------- perf
# With do_perf=1 (BENCH_PERF=1), perf records chosen processes and
# pg_stat_statements the statements' times; append_perf_reports writes
# both next to the result file.  Every function is a no-op otherwise.
perf_pids=()
PERF_FILES=()
STMT_REPORTS=()

# check_perf: dies if do_perf=1 cannot work here.
check_perf() {
    [[ $do_perf == 1 ]] || return 0
    (( EUID == 0 )) || die "BENCH_PERF=1 needs root"
    command -v perf >/dev/null 2>&1 || die "BENCH_PERF=1 needs perf (Debian: linux-perf)"
}

# server_conf_eo: server_conf preloading eo_processing, and with do_perf=1
# also pg_stat_statements (per-statement times of the relay's SQL and of
# the backends').
server_conf_eo() {
    if [[ $do_perf == 1 ]]; then
        server_conf eo_processing,pg_stat_statements
        echo "pg_stat_statements.track = all"
        echo "pg_stat_statements.track_planning = on"
    else
        server_conf eo_processing
    fi
}

# perf_after_start: perf resolves eo_processing.so by build id: cache the
# file the server has just loaded, in case "make install" replaces it
# during the run.
perf_after_start() {
    [[ $do_perf == 1 ]] || return 0
    perf buildid-cache -a "$pkglibdir/eo_processing.so" >/dev/null 2>&1 || true
}

# perf_after_setup: creates pg_stat_statements in the benchmark's database.
perf_after_setup() {
    [[ $do_perf == 1 ]] || return 0
    sql1 "CREATE EXTENSION pg_stat_statements" >/dev/null
}

# perf_start NAME PERF-RECORD-ARGS...: "perf record -g" in the background
# to $tmp/run/perf-NAME.data.
perf_start() {
    local name=$1 f
    shift
    [[ $do_perf == 1 ]] || return 0
    f="$tmp/run/perf-$name.data"
    perf record -g -o "$f" "$@" >"$tmp/logs/perf-$name.log" 2>&1 &
    perf_pids+=($!)
    PERF_FILES+=("$name")
    sleep 0.3
}

# perf_stop: stops every running perf record.
perf_stop() {
    local p
    [[ $do_perf == 1 ]] || return 0
    for p in "${perf_pids[@]}"; do
        kill -INT "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    perf_pids=()
}

# stmts_reset: forgets the statements' times so far.
stmts_reset() {
    [[ $do_perf == 1 ]] || return 0
    sql1 "SELECT pg_stat_statements_reset()" >/dev/null || true
}

# stmts_save NAME: keeps the statements that took the most time since
# stmts_reset, for append_perf_reports.
stmts_save() {
    [[ $do_perf == 1 ]] || return 0
    psql_q -c "SELECT calls, round(total_plan_time::numeric, 1) AS plan_ms,
                      round(total_exec_time::numeric, 1) AS exec_ms,
                      round(((total_plan_time + total_exec_time) / greatest(calls, 1) * 1000)::numeric, 1) AS us_per_call,
                      rows, shared_blks_hit AS blks_hit, toplevel,
                      left(regexp_replace(query, '\s+', ' ', 'g'), 160) AS query
                 FROM pg_stat_statements
                ORDER BY total_plan_time + total_exec_time DESC LIMIT 15" \
        >"$tmp/run/stmts-$1.txt" 2>&1 || true
    STMT_REPORTS+=("$1")
}

# append_perf_reports KIND: a perf report of every recording, as
# results/KIND-<stamp>-perf-NAME.txt (flat), ...-children.txt (inclusive)
# and the recording itself (.data), and the saved statement tables appended
# to the result file.
append_perf_reports() {
    local name f rep
    [[ $do_perf == 1 && $result_file != /dev/null ]] || return 0
    for name in "${PERF_FILES[@]}"; do
        f="$tmp/run/perf-$name.data"
        [[ -s $f ]] || continue
        rep="$results_dir/$1-$stamp-perf-$name.txt"
        perf report -i "$f" --stdio --no-children --sort symbol --percent-limit 0.5 \
            >"$rep" 2>/dev/null || true
        perf report -i "$f" --stdio --children --sort symbol --percent-limit 2 -g none \
            >"${rep%.txt}-children.txt" 2>/dev/null || true
        cp "$f" "${rep%.txt}.data" 2>/dev/null || true
        echo "perf report of $name: $rep" >&2
    done
    {
        echo "## Statements that took the most time (pg_stat_statements, track = all)"
        echo ""
        for name in "${STMT_REPORTS[@]}"; do
            echo "### $name"
            echo ""
            echo '```'
            cat "$tmp/run/stmts-$name.txt"
            echo '```'
            echo ""
        done
    } >>"$result_file"
}

# ------------------------------------------------------- nginx and wrk
# The local webhook receiver of http_bench.sh and relay_bench.sh (nginx
# answering 200 to POST /hook), and its ceiling measured with wrk.  The
# caller sets python, http_port and nginx_workers, and creates $tmp/nginx
# and $tmp/nginx/tmp (prepare_tmp "nginx nginx/tmp ...").
nginx_runner=""             # the runuser/nginx process in the background

# apt_install PKG: installs the Debian package PKG (root only), running
# apt-get update once if the first attempt fails.
apt_install() {
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -qq --no-install-recommends)
    echo "$bench_name: installing Debian's $1 ..." >&2
    if ! "${apt[@]}" install "$1" >/dev/null; then
        "${apt[@]}" update >/dev/null
        "${apt[@]}" install "$1" >/dev/null || die "apt-get install $1 failed"
    fi
}

# find_nginx: sets nginx_bin (empty if nginx is not installed).
find_nginx() {
    nginx_bin=$(command -v nginx 2>/dev/null || true)
    [[ -z $nginx_bin && -x /usr/sbin/nginx ]] && nginx_bin=/usr/sbin/nginx
    true
}

# ensure_nginx: sets nginx_bin, installing nginx from Debian first if it
# is missing (as root).  Debian 12's nginx-light is only nginx plus an
# echo module; older releases' nginx is a metapackage that pulls
# nginx-core: either gives /usr/sbin/nginx.  Debian starts the system's
# nginx service after installing it (unless policy-rc.d forbids); the
# benchmarks run their own instance and leave that one alone.
ensure_nginx() {
    local pkg candidate
    find_nginx
    [[ -n $nginx_bin ]] && return 0
    (( EUID == 0 )) || die "nginx is not installed: install it (apt-get install nginx) or run as root"
    for pkg in nginx nginx-light; do
        candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        [[ -n $candidate && $candidate != "(none)" ]] || continue
        apt_install "$pkg"
        find_nginx
        [[ -n $nginx_bin ]] || die "nginx not found after installing $pkg"
        return 0
    done
    die "neither nginx nor nginx-light is known to apt (apt-get update?)"
}

# ensure_wrk: sets wrk_bin, installing Debian's wrk first if it is missing
# and we are root; false (wrk_bin empty) if it cannot be had.
ensure_wrk() {
    wrk_bin=$(command -v wrk 2>/dev/null || true)
    [[ -n $wrk_bin ]] && return 0
    (( EUID == 0 )) || return 1
    apt_install wrk
    wrk_bin=$(command -v wrk 2>/dev/null || true)
    [[ -n $wrk_bin ]]
}

# nginx_conf [MAIN_LINES [LOCATIONS]]: the receiver's configuration: POST
# /hook -> 200 "ok" (the body is read and discarded, so the connection
# stays usable), long keep-alive, an access log of $msec and the message
# ids, buffered (written every 100 ms at the latest; $msec is the time of
# the request, not of the write).  MAIN_LINES go first (load_module ...),
# LOCATIONS into the server block.
nginx_conf() {
    local ng=$tmp/nginx
    [[ -n ${1:-} ]] && printf '%s\n' "$1"
    cat <<CONF
# $bench_name.sh: the webhook receiver
worker_processes $nginx_workers;
daemon off;
pid $ng/nginx.pid;
error_log $ng/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $ng/tmp/body;
    proxy_temp_path $ng/tmp/proxy;
    fastcgi_temp_path $ng/tmp/fastcgi;
    uwsgi_temp_path $ng/tmp/uwsgi;
    scgi_temp_path $ng/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_body_buffer_size 64k;
    default_type text/plain;
    log_format hook '\$msec \$http_idempotency_key \$status \$connection \$connection_requests \$request_length \$http_webhook_id';
    server {
        listen 127.0.0.1:$http_port backlog=4096;
        location = /hook {
            access_log $ng/access.log hook buffer=64k flush=100ms;
            if (\$request_method != POST) { return 405; }
            return 200 "ok\n";
        }
${2:-}
        location / { return 404; }
    }
}
CONF
}

# start_nginx [MAIN_LINES [LOCATIONS]]: writes nginx_conf's configuration,
# starts our nginx as the server user and waits until it answers; sets
# nginx_pid (the master) and nginx_version, and creates the access log.
start_nginx() {
    local i ng=$tmp/nginx
    nginx_conf "${1:-}" "${2:-}" >"$ng/nginx.conf"
    (( EUID == 0 )) && chown -R postgres: "$ng"
    as_pg "$nginx_bin" -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" >"$tmp/logs/nginx.out" 2>&1 &
    nginx_runner=$!
    for (( i = 0; i < 100; i++ )); do
        if [[ -s $ng/nginx.pid ]] && as_pg "$python" -c '
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
c.request("POST", "/hook", body=b"{}")
sys.exit(c.getresponse().status != 200)' "$http_port" 2>/dev/null; then
            nginx_pid=$(head -n 1 "$ng/nginx.pid")
            nginx_version=$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')
            touch "$ng/access.log"
            return 0
        fi
        kill -0 "$nginx_runner" 2>/dev/null || break
        sleep 0.1
    done
    cat "$tmp/logs/nginx.out" "$ng/error.log" >&2 2>/dev/null || true
    die "nginx did not start"
}

# stop_nginx: stops our nginx (if running) and waits for it.
stop_nginx() {
    [[ -n $nginx_runner ]] || return 0
    [[ -s $tmp/nginx/nginx.pid ]] && kill -TERM "$(head -n 1 "$tmp/nginx/nginx.pid")" 2>/dev/null
    wait "$nginx_runner" 2>/dev/null || true
    nginx_runner=""
}

# nginx_cpu_ticks: CPU ticks of nginx's worker processes.
nginx_cpu_ticks() {
    local p t=0
    for p in $(ps -o pid= --ppid "$nginx_pid" 2>/dev/null); do
        t=$(( t + $(proc_cpu_ticks "$p") ))
    done
    echo "$t"
}

# machine_cpu_ticks: busy and total CPU ticks of the whole machine so far
# (/proc/stat, all CPUs: idle and iowait count as not busy), "busy total".
machine_cpu_ticks() {
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

# log_mark: lines in the access log so far (a phase's first line is the next).
log_mark() { wc -l <"$tmp/nginx/access.log"; }

# log_settle: returns once the access log has stopped growing (nginx
# writes its buffer every 100 ms).
log_settle() {
    local n0 n1
    n1=$(log_mark)
    while :; do
        sleep 0.3
        n0=$n1
        n1=$(log_mark)
        (( n1 == n0 )) && break
    done
}

# log_since MARK FILE: once the log has settled, copies the lines after
# MARK to FILE.
log_since() {
    log_settle
    tail -n +"$(( $1 + 1 ))" "$tmp/nginx/access.log" >"$2"
}

# wrk_version: "wrk 4.1.0" (the first two words of wrk -v).
wrk_version() { "$wrk_bin" -v 2>&1 | awk 'NR == 1 { print $1, $2 }'; }

# wrk_ceiling URL SECONDS CONNECTIONS: what our nginx answers at most,
# measured by wrk (ensure_wrk first): CONNECTIONS keep-alive connections
# on two threads for SECONDS, each POSTing a request the size of a signed
# webhook (about 100 bytes of JSON and the relay's headers) to URL.  Sets
# WRK_RPS (requests/s) and WRK_ERRORS (non-2xx answers and socket errors);
# the access log has settled when it returns.
wrk_ceiling() {
    local lua=$tmp/logs/wrk_post.lua log=$tmp/logs/wrk.log threads=2
    (( $3 < threads )) && threads=$3
    cat >"$lua" <<'LUA'
-- bench_lib.sh wrk_ceiling: a request shaped like a signed webhook
wrk.method = "POST"
wrk.body = '{"i": 1, "pad": "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = "wrk-ceiling"
wrk.headers["webhook-id"] = "01a21a0b-88ff-7063-b597-0b2152cb98be"
wrk.headers["webhook-timestamp"] = "1764748800"
wrk.headers["webhook-signature"] = "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="
wrk.headers["eo-topic"] = "bench.drain"
LUA
    "$wrk_bin" -t "$threads" -c "$3" -d "${2}s" -s "$lua" "$1" >"$log" 2>&1 ||
        { cat "$log" >&2; die "wrk failed"; }
    WRK_RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$log")
    WRK_ERRORS=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
                      /Socket errors:/ { for (i = 4; i <= NF; i += 2) n += $i }
                      END { print n + 0 }' "$log")
    [[ -n $WRK_RPS ]] || { cat "$log" >&2; die "could not read wrk's requests/s"; }
    log_settle
}
