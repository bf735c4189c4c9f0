#!/usr/bin/env bash
# `make port-forward`: the API, Prometheus and Grafana on localhost until Ctrl-C.
# Ports: API_PORT (8000), PROMETHEUS_PORT (9090), GRAFANA_PORT (3000), e.g.
#   make port-forward API_PORT=18000
# A port something else listens on (compose publishes 8000 and 9090) is reported and skipped; the other
# forwards run. A forward that exits (its pod was replaced) is started again. Runs under macOS's bash 3.2
# (no `wait -n`, no associative arrays) and with the tools of both macOS and Linux.
set -eu
: "${KUBECTL:=kubectl}" "${NAMESPACE:=taskqueue}" "${GENERATOR:=taskqueue-generator}"
: "${API_PORT:=8000}" "${PROMETHEUS_PORT:=9090}" "${GRAFANA_PORT:=3000}"

# name, namespace, service, local port, service port: one forward a line.
FORWARDS="api $NAMESPACE $GENERATOR $API_PORT 8000
prometheus monitoring kube-prometheus-stack-prometheus $PROMETHEUS_PORT 9090
grafana monitoring kube-prometheus-stack-grafana $GRAFANA_PORT 80"

run=$(mktemp -d "${TMPDIR:-/tmp}/taskqueue-forward.XXXXXX")
cleanup() {
  for pidfile in "$run"/*.pid; do
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

listening() { # port: something accepts connections on 127.0.0.1:port
  if command -v lsof >/dev/null 2>&1; then
    lsof -nP -iTCP:"$1" -sTCP:LISTEN >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

start() { # name namespace service local-port service-port
  # KUBECTL is a command and its flags (bin/kubectl --context kind-taskqueue): split on purpose.
  $KUBECTL -n "$2" port-forward "service/$3" "$4:$5" >"$run/$1.log" 2>&1 &
  echo $! >"$run/$1.pid"
}

active=""
while read -r name ns service port remote; do
  if listening "$port"; then
    variable=$(echo "$name" | tr '[:lower:]' '[:upper:]')_PORT
    other=$((port < 55000 ? port + 10000 : port - 10000))
    echo "$name: port $port is taken by another program; not forwarded (choose another: make port-forward $variable=$other)" >&2
    continue
  fi
  start "$name" "$ns" "$service" "$port" "$remote"
  echo "$ns $service $port $remote" >"$run/$name.args"
  active="$active $name"
done <<EOF
$FORWARDS
EOF
if [ -z "$active" ]; then
  echo "no port to forward to: every one is taken" >&2
  exit 1
fi

# Each forward's port answers (kubectl has connected), within 15 s.
for name in $active; do
  read -r _ _ port _ <"$run/$name.args"
  tries=0
  until listening "$port" || [ "$tries" -ge 75 ]; do
    sleep 0.2
    tries=$((tries + 1))
  done
  if ! listening "$port"; then
    echo "$name: kubectl port-forward did not listen on $port: $(tail -n 3 "$run/$name.log")" >&2
  fi
done

for name in $active; do
  read -r _ _ port _ <"$run/$name.args"
  case $name in
    api) echo "API         http://localhost:$port   curl -s localhost:$port/start; curl -s localhost:$port/list" ;;
    prometheus) echo "Prometheus  http://localhost:$port   sum(taskqueue_jobs_enqueued_total), sum(taskqueue_jobs_completed_total)" ;;
    grafana) echo "Grafana     http://localhost:$port   admin / taskqueue-dev-only (dev-only password, k8s/kube-prometheus-stack-values.yaml)" ;;
  esac
done
echo "Ctrl-C stops the forwards."

# Until Ctrl-C: a forward that exited is started again (its pod was replaced, or the cluster restarted).
# Builtins only (read, not $(cat)): a SIGINT that reaches bash alone while it waits for a command substitution
# is dropped (bash takes the child's normal exit as the signal handled), and the loop would never stop.
while :; do
  sleep 2
  for name in $active; do
    read -r pid <"$run/$name.pid"
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name: the port-forward exited ($(tail -n 1 "$run/$name.log")); starting it again" >&2
      read -r ns service port remote <"$run/$name.args"
      start "$name" "$ns" "$service" "$port" "$remote"
    fi
  done
done
