#!/usr/bin/env bash
# The fault campaign (tests/faults.rs): eds SIGKILLed in a loop, NATS restarted and frozen,
# PostgreSQL crashed mid-batch, the disk full, an outage longer than the stream's retention.
# Needs root (a tmpfs is mounted), PostgreSQL at 127.0.0.1:5432 (user postgres, database test)
# and PostgreSQL's server programs (initdb, pg_ctl) for a private cluster.
#
#   scripts/faults.sh           the short mode, as CI runs it (about a minute)
#   scripts/faults.sh --long    400 SIGKILL rounds over 1M events, and larger runs of the others
#
# Environment: EDS_FAULTS_ROUNDS, EDS_FAULTS_EVENTS (SIGKILL loop size), EDS_FAULTS_SEED (replay a
# run: a failing test prints its seed), EDS_FAULTS_REPEAT (run the campaign that many times).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=default
case "${1:-}" in
  --long) export EDS_FAULTS_LONG=1; profile=faults-long ;;
  "") ;;
  *) echo "usage: $0 [--long]" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/eds-target}"
repeat="${EDS_FAULTS_REPEAT:-1}"
for i in $(seq 1 "$repeat"); do
  printf '==> fault campaign, run %s of %s (%s)\n' "$i" "$repeat" "$profile"
  cargo nextest run --locked --profile "$profile" --test integration -E 'test(/^faults::/)'
done
