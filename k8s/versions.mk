# Every version the kind setup uses, in one place (make and the tests read this file).
# Bump here only; tests/chart/test_kind_make.py checks that `make -n kind-up` uses exactly these.

# Tools fetched into ./bin by `make tools` (a stamp per version re-fetches on a bump); `make kind-up` and the
# other targets always run these, never a kind, kubectl or helm of another version that may be on PATH.
KIND_VERSION := v0.32.0
KUBECTL_VERSION := v1.36.1
# The same Helm the chart tests render with (helm-python-sdk 0.2.2 embeds Helm v4.2.3).
HELM_VERSION := v4.2.3

# The default node image of kind v0.32.0 (pkg/apis/config/defaults/image.go at the v0.32.0 tag), by digest.
KIND_NODE_IMAGE := kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5
# The Kubernetes version the chart is validated against (kubernetes-validate) is the node image's.
KUBERNETES_VERSION := 1.36.1

# Third-party charts.
KEDA_CHART_REPO := https://kedacore.github.io/charts
KEDA_CHART_VERSION := 2.20.2
# 88.3.0 ships Prometheus Operator v0.93.0, the version of the CRDs the chart tests validate against.
KPS_CHART_REPO := https://prometheus-community.github.io/helm-charts
KPS_CHART_VERSION := 88.3.0

# Our images are built here: their names are values.yaml's generator.image.repository and
# worker.image.repository, their tag each build's own (k8s/image-tag.sh). Redis's is pulled, by digest, the
# same as values.yaml's redis.image (refresh: `docker buildx imagetools inspect docker.io/library/redis:<tag>`).
REDIS_IMAGE := docker.io/library/redis:8.2.2-alpine@sha256:59b6e694653476de2c992937ebe1c64182af4728e54bb49e9b7a6c26614d8933
