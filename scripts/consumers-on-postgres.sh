#!/usr/bin/env bash
# Idempotent consume with K consumer processes sharing one PostgreSQL dedup store.
# Usage: scripts/consumers-on-postgres.sh [N] [K...]   (default: 60000 messages; K = 1 2 3)
# Needs a release build (cargo build --release -p rabbit-once-cli), the broker on 127.0.0.1:5672
# and PostgreSQL on 127.0.0.1:5432 (database test). Prints one line per K: messages applied, the
# span from the first to the last commit, msg/s. Each K gets its own queue and schema, removed after.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/rabbit-once}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
N=${1:-60000}; shift || true
KS=${*:-1 2 3}
for K in $KS; do
  q="ro-pgscale-$$-$K"; schema="ro_pgscale_$$_$K"
  "$BIN" publish --queue "$q" --count "$N" --size 512 --json >/dev/null
  pids=()
  for j in $(seq 1 "$K"); do
    "$BIN" consume --queue "$q" --store "$PG" --schema "$schema" --until-idle 3 --batch 200 --json >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  psql -X -q -t -A "$PG" -c "SELECT $K, COUNT(*), COUNT(DISTINCT message_id), (MAX(applied_at) - MIN(applied_at)) / 1000 FROM \"$schema\".applied" |
    awk -F'|' '{ ms = $4; printf "consumers=%s applied=%s distinct=%s span_ms=%s msg_per_s=%.0f\n", $1, $2, $3, ms, (ms > 0 ? $2 * 1000 / ms : 0) }'
  psql -X -q "$PG" -c "SET client_min_messages = warning; DROP SCHEMA \"$schema\" CASCADE" >/dev/null
  # The work queue and the consumer's retry and dead-letter queues (`<q>.retry.<ms>`, `<q>.dead`).
  for x in $(rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$q"); do
    rabbitmqctl -q delete_queue "$x" >/dev/null 2>&1 || true
  done
done
