# shellcheck shell=bash
# Shared helpers of scripts/demo and scripts/test (sourced, not run).
#
# PostgreSQL refuses to run as root.  These helpers therefore split the work:
# package installation and "make install" run as root (directly when the
# caller is root, through sudo otherwise); servers and test suites run as an
# unprivileged user: "postgres" when the caller is root, the caller otherwise.

EO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=15
# EO_PG_BINDIR selects another (relocated) PostgreSQL installation, so that
# several working copies can be tested at once without sharing installed files.
PG_BINDIR=${EO_PG_BINDIR:-/usr/lib/postgresql/$PG_MAJOR/bin}
PG_CONFIG=$PG_BINDIR/pg_config
# Debian packages the build, the tests and the demo need.
EO_PACKAGES=(make gcc "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR"
	libipc-run-perl python3-psycopg2 libdbd-pg-perl cppcheck clang-tidy
	libcurl4-openssl-dev python3-psycopg valgrind openssl nats-server libnats-dev
	librdkafka-dev kcat python3-confluent-kafka)

eo_say() { printf '==> %s\n' "$*"; }
eo_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root.
eo_as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		eo_die "this step needs root: run as root or install sudo ($*)"
	fi
}

# The unprivileged user that runs servers and tests.
eo_runner() {
	if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

# Run a command as the unprivileged runner.
eo_as_runner() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# Install the Debian packages that are missing (and nothing else).
eo_install_packages() {
	local missing=() pkg
	for pkg in "${EO_PACKAGES[@]}" "$@"; do
		if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$pkg")
		fi
	done
	if [ ${#missing[@]} -gt 0 ]; then
		eo_say "installing Debian packages: ${missing[*]} (needs root)"
		eo_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
		eo_as_root env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	[ -x "$PG_CONFIG" ] || eo_die "$PG_CONFIG not found after installing packages"
}

# Build as the caller, install as root.  CI builds with -Werror.
eo_build_and_install() {
	local werror=()
	if [ "${CI:-}" = true ]; then werror=(EO_CFLAGS=-Werror); fi
	eo_say "building eo_processing"
	make -s -C "$EO_ROOT" PG_CONFIG="$PG_CONFIG" "${werror[@]}" >/dev/null
	eo_say "installing eo_processing into PostgreSQL $PG_MAJOR (needs root)"
	eo_as_root make -s -C "$EO_ROOT" PG_CONFIG="$PG_CONFIG" install >/dev/null
}

# Copy the source tree (without .git and build products) into a fresh
# directory owned by the runner; print its path.
eo_private_copy() {
	local dir
	dir=$(mktemp -d "${TMPDIR:-/tmp}/eo_processing.XXXXXX")
	tar -C "$EO_ROOT" --exclude=.git --exclude='*.o' --exclude='*.so' \
		--exclude='*.bc' --exclude=./.demo --exclude=./results \
		--exclude='./tmp_check*' --exclude=./output_iso \
		--exclude=./examples/node/node_modules --exclude=__pycache__ -cf - . | tar -C "$dir" -xf -
	if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$dir"; fi
	chmod 755 "$dir"
	echo "$dir"
}
