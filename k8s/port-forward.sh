#!/usr/bin/env bash
# `make port-forward`: the API on :8000, Prometheus on :9090 and Grafana on :3000 until Ctrl-C.
set -euo pipefail
: "${KUBECTL:=kubectl}" "${NAMESPACE:=taskqueue}" "${GENERATOR:=taskqueue-generator}"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
forward() { # namespace service local:remote
  $KUBECTL -n "$1" port-forward "service/$2" "$3" >/dev/null &
  pids+=($!)
}
forward "$NAMESPACE" "$GENERATOR" 8000:8000
forward monitoring kube-prometheus-stack-prometheus 9090:9090
forward monitoring kube-prometheus-stack-grafana 3000:80
sleep 2
cat <<TXT
API         http://localhost:8000   curl -s localhost:8000/start; curl -s localhost:8000/list
Prometheus  http://localhost:9090   sum(taskqueue_jobs_enqueued_total), sum(taskqueue_jobs_completed_total)
Grafana     http://localhost:3000   admin / taskqueue-dev-only (dev-only password, k8s/kube-prometheus-stack-values.yaml)
Ctrl-C stops the forwards.
TXT
wait -n "${pids[@]}"
echo "a port-forward exited; stopping the others" >&2
