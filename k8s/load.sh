#!/usr/bin/env bash
# `make load`: a burst of LOAD_JOBS GET /start calls (LOAD_CONCURRENCY at once) through a temporary
# port-forward to the generator Service, with progress and a summary of the answers.
set -euo pipefail
: "${KUBECTL:=kubectl}" "${NAMESPACE:=taskqueue}" "${GENERATOR:=taskqueue-generator}"
: "${LOAD_JOBS:=200}" "${LOAD_CONCURRENCY:=10}" "${LOAD_PORT:=18000}"
base="http://127.0.0.1:${LOAD_PORT}"

$KUBECTL -n "$NAMESPACE" port-forward "service/$GENERATOR" "${LOAD_PORT}:8000" >/dev/null &
pf=$!
trap 'kill $pf 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fsS -o /dev/null "$base/healthz" 2>/dev/null && break; sleep 0.2; done
curl -fsS -o /dev/null "$base/healthz" || { echo "the generator does not answer on $base" >&2; exit 1; }

codes=$(mktemp)
trap 'kill $pf 2>/dev/null || true; rm -f "$codes"' EXIT
echo "enqueueing $LOAD_JOBS jobs via $base/start ($LOAD_CONCURRENCY at once)"
sent=0
while ((sent < LOAD_JOBS)); do
  batch=$((LOAD_JOBS - sent < LOAD_CONCURRENCY ? LOAD_JOBS - sent : LOAD_CONCURRENCY))
  pids=()
  for _ in $(seq "$batch"); do
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "$base/start" >>"$codes" &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  sent=$((sent + batch))
  printf '\r  %d/%d sent' "$sent" "$LOAD_JOBS"
done
echo
echo "answers: $(sort "$codes" | uniq -c | awk '{printf "%s x HTTP %s  ", $1, $2}')"
echo "queue:   $(curl -fsS "$base/list" | head -c 300)"
echo "watch the workers scale: $KUBECTL -n $NAMESPACE get scaledobject,hpa,pods -w"
