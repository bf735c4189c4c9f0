#!/bin/sh
# `make scale REPLICAS=n`: pin the workers at n, and return once n are ready.
# With autoscaling on, KEDA's HPA owns the worker count and undoes a plain `kubectl scale deployment`
# within about 15 s; KEDA's annotation autoscaling.keda.sh/paused-replicas on the ScaledObject is how it
# lets you take over (`make autoscale` removes it and hands the count back). Without the ScaledObject,
# the Deployment is scaled. POSIX sh: runs with the tools of both macOS and Linux.
set -eu
: "${KUBECTL:=kubectl}" "${NAMESPACE:=taskqueue}" "${WORKER:=taskqueue-worker}" "${SCALE_TIMEOUT:=180}"
REPLICAS=${REPLICAS:-}
case $REPLICAS in
  '' | *[!0-9]*)
    echo "usage: make scale REPLICAS=n (a whole number, 0 or more)" >&2
    exit 2
    ;;
esac
# KUBECTL is a command and its flags (bin/kubectl --context kind-taskqueue): split on purpose.
if $KUBECTL -n "$NAMESPACE" get "scaledobject/$WORKER" >/dev/null 2>&1; then
  $KUBECTL -n "$NAMESPACE" annotate "scaledobject/$WORKER" --overwrite "autoscaling.keda.sh/paused-replicas=$REPLICAS"
  echo "KEDA paused: the workers stay at $REPLICAS until \`make autoscale\`"
else
  $KUBECTL -n "$NAMESPACE" scale "deployment/$WORKER" --replicas="$REPLICAS"
fi

# Wait for the Deployment to have n pods, all ready (KEDA applies the pause within its polling interval).
waited=0
while :; do
  counts=$($KUBECTL -n "$NAMESPACE" get "deployment/$WORKER" \
    -o jsonpath='{.spec.replicas}/{.status.replicas}/{.status.readyReplicas}')
  IFS=/ read -r wanted pods ready <<COUNTS
$counts
COUNTS
  if [ "${wanted:-0}" = "$REPLICAS" ] && [ "${pods:-0}" = "$REPLICAS" ] && [ "${ready:-0}" = "$REPLICAS" ]; then
    break
  fi
  if [ "$waited" -ge "$SCALE_TIMEOUT" ]; then
    echo "deployment/$WORKER: ${ready:-0} of ${pods:-0} pods ready (wanted ${wanted:-0}) after $SCALE_TIMEOUT s, not $REPLICAS" >&2
    exit 1
  fi
  sleep 2
  waited=$((waited + 2))
done
$KUBECTL -n "$NAMESPACE" get "deployment/$WORKER"
