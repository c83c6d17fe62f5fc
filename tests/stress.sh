#!/usr/bin/env bash
# The test suite on a busy machine: CPU hogs (one per core) and an fsync-heavy disk writer run beside
# `make test` for its whole length, as another stack or a build would on a developer's laptop.
# Usage: tests/stress.sh [pytest args…]   (DATABASE_URL=postgresql+psycopg://… for PostgreSQL)
set -uo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
hogs=()
cleanup() {
  for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT INT TERM
for _ in $(seq "$(nproc)"); do
  sh -c 'while :; do :; done' &
  hogs+=($!)
done
sh -c "while :; do dd if=/dev/zero of='$scratch/fsync' bs=1M count=32 conv=fsync status=none; done" &
hogs+=($!)
echo "stress: $(nproc) CPU hogs and an fsync loop running beside the suite"
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=8 "$@"
