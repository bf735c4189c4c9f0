#!/usr/bin/env bash
# `make doctor` (and the first step of `make kind-up`): is this machine ready for the kind stack?
# One line a check: "ok", "WARN" (kind-up may work, or be slow) or "FAIL" (it will not), each with the fix.
# Exits 1 on a FAIL. Runs under macOS's bash 3.2 and with the tools of both macOS and Linux; every tool is
# looked up on PATH (tests/chart/test_doctor.py puts fakes first).
set -u
: "${CONTAINER_ENGINE:=docker}" "${API_PORT:=8000}" "${PROMETHEUS_PORT:=9090}" "${GRAFANA_PORT:=3000}"

# What the stack requests, summed from its values (tests/chart/test_doctor.py recomputes the sum and fails
# when these fall behind): the kind node's control plane (apiserver, controller-manager, scheduler, etcd,
# CoreDNS x2, kindnet, kube-proxy: 950m, 400 MiB), KEDA (k8s/keda-values.yaml: 120m, 160 MiB),
# kube-prometheus-stack (k8s/kube-prometheus-stack-values.yaml: 230m, 528 MiB), and the chart at
# autoscaling.maxReplicaCount workers (helm/taskqueue/values.yaml: 1300m, 1664 MiB).
: "${REQUIRED_CPU_MILLI:=2600}" "${REQUIRED_MEMORY_MIB:=2752}"

failed=0
ok() { echo "ok   $1"; }
warn() { echo "WARN $1"; }
fail() {
  echo "FAIL $1"
  failed=1
}
have() { command -v "$1" >/dev/null 2>&1; }

# -- the container engine -----------------------------------------------------------------------
case $CONTAINER_ENGINE in
  docker) info_format='{{.NCPU}} {{.MemTotal}} {{.Driver}} {{.ServerVersion}} {{.OperatingSystem}}' ;;
  podman) info_format='{{.Host.CPUs}} {{.Host.MemTotal}} {{.Store.GraphDriverName}} {{.Version.Version}} {{.Host.Distribution.Distribution}}' ;;
  *)
    fail "CONTAINER_ENGINE=$CONTAINER_ENGINE: docker or podman"
    info_format=""
    ;;
esac
info=""
if [ -n "$info_format" ]; then
  if ! have "$CONTAINER_ENGINE"; then
    fail "$CONTAINER_ENGINE not found: install Docker Desktop (or Docker Engine), or run with CONTAINER_ENGINE=podman"
  elif ! info=$("$CONTAINER_ENGINE" info --format "$info_format" 2>&1); then
    fail "$CONTAINER_ENGINE does not answer ($(echo "$info" | head -n 1)): start Docker Desktop or the docker service"
    info=""
  fi
fi
if [ -n "$info" ]; then
  # shellcheck disable=SC2086  # the fields, split on purpose
  set -- $info
  cpus=${1:-0} memory=${2:-0} driver=${3:-?} version=${4:-?}
  shift 4 2>/dev/null || set --
  ok "$CONTAINER_ENGINE $version on ${*:-?}, storage driver $driver"
  if [ "$driver" = vfs ]; then
    warn "storage driver vfs copies every layer in full: slow, and the stack's images take many GB (use overlay2)"
  fi
  cpu_milli=$((cpus * 1000))
  memory_mib=$((memory / 1048576))
  need="the stack requests ${REQUIRED_CPU_MILLI}m CPU and ${REQUIRED_MEMORY_MIB} MiB"
  fix="give $CONTAINER_ENGINE more (Docker Desktop: Settings > Resources), or lower autoscaling.maxReplicaCount (HELM_ARGS=\"--set autoscaling.maxReplicaCount=3\")"
  if [ "$cpu_milli" -lt "$REQUIRED_CPU_MILLI" ] || [ "$memory_mib" -lt "$REQUIRED_MEMORY_MIB" ]; then
    fail "$cpus CPUs and $memory_mib MiB for containers, but $need: pods would stay Pending; $fix"
  elif [ $((cpu_milli * 2)) -lt $((REQUIRED_CPU_MILLI * 3)) ] || [ $((memory_mib * 2)) -lt $((REQUIRED_MEMORY_MIB * 3)) ]; then
    warn "$cpus CPUs and $memory_mib MiB for containers: $need, little room to spare; $fix"
  else
    ok "$cpus CPUs and $memory_mib MiB for containers ($need)"
  fi
fi

# -- inotify (kind's known "too many open files") ----------------------------------------------------
if [ "$(uname -s)" = Linux ]; then
  watches=$(sysctl -n fs.inotify.max_user_watches 2>/dev/null || echo 0)
  instances=$(sysctl -n fs.inotify.max_user_instances 2>/dev/null || echo 0)
  if [ "$watches" -lt 524288 ] || [ "$instances" -lt 512 ]; then
    warn "inotify limits $watches watches, $instances instances: kind's pods may fail with \"too many open files\"; sudo sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512"
  else
    ok "inotify limits $watches watches, $instances instances"
  fi
else
  ok "inotify limits: set inside Docker Desktop's VM, not here"
fi

# -- ports of `make port-forward` ---------------------------------------------------------------------
listening() { # port
  if have lsof; then
    lsof -nP -iTCP:"$1" -sTCP:LISTEN >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
for pair in "API_PORT $API_PORT" "PROMETHEUS_PORT $PROMETHEUS_PORT" "GRAFANA_PORT $GRAFANA_PORT"; do
  # shellcheck disable=SC2086  # name and port, split on purpose
  set -- $pair
  if listening "$2"; then
    other=$(($2 < 55000 ? $2 + 10000 : $2 - 10000))
    warn "port $2 is taken: make port-forward will skip it; choose another: make port-forward $1=$other"
  else
    ok "port $2 free"
  fi
done

# -- tools -----------------------------------------------------------------------------------------
for tool in curl tar git; do
  if have "$tool"; then ok "$tool"; else fail "$tool not found: install it"; fi
done
if have sha256sum; then
  ok "sha256sum"
elif have shasum; then
  ok "shasum -a 256 (no sha256sum)"
else
  fail "no sha256sum or shasum: make tools cannot check the kind, kubectl and helm it fetches"
fi

exit "$failed"
