# kind targets (the top Makefile includes this file): a local Kubernetes with KEDA, Prometheus,
# Grafana and the taskqueue chart. Docker is the only prerequisite: `make tools` fetches the pinned
# kind, kubectl and helm into ./bin. Every version is in k8s/versions.mk.
include k8s/versions.mk

KIND_CLUSTER ?= taskqueue
NAMESPACE ?= taskqueue
RELEASE ?= taskqueue
CONTAINER_ENGINE ?= docker
ifeq ($(CONTAINER_ENGINE),podman)
# kind's node runs in podman too (kind's podman provider).
export KIND_EXPERIMENTAL_PROVIDER := podman
endif
# `make port-forward`'s local ports (`make doctor` checks that they are free).
API_PORT ?= 8000
PROMETHEUS_PORT ?= 9090
GRAFANA_PORT ?= 3000
# Extra flags for `helm upgrade --install` of the taskqueue chart, e.g. "--set worker.processes=2".
HELM_ARGS ?=
# `make load`: how many /start calls, how many at once.
LOAD_JOBS ?= 200
LOAD_CONCURRENCY ?= 10

BIN := $(CURDIR)/bin
OS := $(shell uname -s | tr '[:upper:]' '[:lower:]')
ARCH := $(shell uname -m | sed -e 's/x86_64/amd64/' -e 's/aarch64/arm64/')
# A SHA-256 tool of both Linux (sha256sum) and macOS (shasum; sha256sum only from macOS 14).
SHA256 := $(shell command -v sha256sum >/dev/null 2>&1 && echo sha256sum || echo shasum -a 256)
KIND := $(BIN)/kind
KUBECTL := $(BIN)/kubectl
HELM := $(BIN)/helm
# Every kubectl/helm call names the kind cluster's context: no other cluster is ever touched.
KUBE_CONTEXT := kind-$(KIND_CLUSTER)
KCTL := $(KUBECTL) --context $(KUBE_CONTEXT)
HELM_CTX := $(HELM) --kube-context $(KUBE_CONTEXT)

# Our images: names from the chart's values.yaml; the tag is this build's (k8s/image-tag.sh: the commit,
# and a digest of uncommitted changes), new whenever the code changed, and given to the chart
# (image.tag), so that every rebuild rolls out. IMAGE_TAG=... overrides it.
CHART_DIR := helm/taskqueue
APP_VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$$/\1/p' $(CHART_DIR)/Chart.yaml)
ifndef IMAGE_TAG
IMAGE_TAG := $(shell sh k8s/image-tag.sh)
endif
GENERATOR_IMAGE := taskqueue-generator:$(IMAGE_TAG)
WORKER_IMAGE := taskqueue-worker:$(IMAGE_TAG)
APP_IMAGES := $(GENERATOR_IMAGE) $(WORKER_IMAGE)

# Your own tasks (README, "Your own tasks"): TASKS_PACKAGE=examples/csv_summary (any directory with an
# installable package of tasks) builds examples/Dockerfile on both images with the package installed,
# as <name>-generator and <name>-worker (<name>: the directory's name, _ as -), loads those into kind
# and installs the chart with them (the exporter runs from the generator image).
TASKS_PACKAGE ?=
ifneq ($(strip $(TASKS_PACKAGE)),)
TASKS_NAME := $(subst _,-,$(notdir $(abspath $(TASKS_PACKAGE))))
TASKS_GENERATOR_IMAGE := $(TASKS_NAME)-generator:$(IMAGE_TAG)
TASKS_WORKER_IMAGE := $(TASKS_NAME)-worker:$(IMAGE_TAG)
APP_IMAGES := $(TASKS_GENERATOR_IMAGE) $(TASKS_WORKER_IMAGE)
TASKS_HELM_ARGS := --set generator.image.repository=$(TASKS_NAME)-generator --set worker.image.repository=$(TASKS_NAME)-worker
endif

# The chart's fullname: the release name when it contains "taskqueue", else <release>-taskqueue.
FULLNAME := $(if $(findstring taskqueue,$(RELEASE)),$(RELEASE),$(RELEASE)-taskqueue)
GENERATOR := $(FULLNAME)-generator
WORKER := $(FULLNAME)-worker

.PHONY: tools images doctor kind-up kind-down kind-load port-forward scale autoscale load

# -- tools: pinned binaries in ./bin; a stamp per version re-fetches on a bump -----------------
tools: $(BIN)/.kind-$(KIND_VERSION) $(BIN)/.kubectl-$(KUBECTL_VERSION) $(BIN)/.helm-$(HELM_VERSION) ## Fetch pinned kind, kubectl and helm into ./bin (when missing)

$(BIN)/.kind-$(KIND_VERSION):
	mkdir -p $(BIN)
	curl -fsSLo $(KIND).download https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-$(OS)-$(ARCH)
	echo "$$(curl -fsSL https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-$(OS)-$(ARCH).sha256sum | cut -d' ' -f1)  $(KIND).download" | $(SHA256) -c -
	chmod +x $(KIND).download && mv $(KIND).download $(KIND)
	touch $@

$(BIN)/.kubectl-$(KUBECTL_VERSION):
	mkdir -p $(BIN)
	curl -fsSLo $(KUBECTL).download https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$(OS)/$(ARCH)/kubectl
	echo "$$(curl -fsSL https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$(OS)/$(ARCH)/kubectl.sha256)  $(KUBECTL).download" | $(SHA256) -c -
	chmod +x $(KUBECTL).download && mv $(KUBECTL).download $(KUBECTL)
	touch $@

$(BIN)/.helm-$(HELM_VERSION):
	mkdir -p $(BIN)/helm-extract
	curl -fsSLo $(BIN)/helm.tar.gz https://get.helm.sh/helm-$(HELM_VERSION)-$(OS)-$(ARCH).tar.gz
	echo "$$(curl -fsSL https://get.helm.sh/helm-$(HELM_VERSION)-$(OS)-$(ARCH).tar.gz.sha256sum | cut -d' ' -f1)  $(BIN)/helm.tar.gz" | $(SHA256) -c -
	tar -xzf $(BIN)/helm.tar.gz -C $(BIN)/helm-extract
	mv $(BIN)/helm-extract/$(OS)-$(ARCH)/helm $(HELM)
	rm -rf $(BIN)/helm.tar.gz $(BIN)/helm-extract
	touch $@

# -- images ------------------------------------------------------------------------------------
# Docker builds without a provenance attestation: `kind load docker-image` fails on an image that has one
# under Docker's containerd image store (kind#3795, kind#4066).
BUILD_FLAGS := $(if $(filter docker,$(CONTAINER_ENGINE)),--provenance=false)
images: ## Build the generator and worker images (CONTAINER_ENGINE=docker|podman; TASKS_PACKAGE=dir adds your tasks)
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) -f services/Dockerfile --target generator -t $(GENERATOR_IMAGE) .
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) -f services/Dockerfile --target worker -t $(WORKER_IMAGE) .
ifneq ($(strip $(TASKS_PACKAGE)),)
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) -f examples/Dockerfile --build-arg BASE_IMAGE=$(GENERATOR_IMAGE) -t $(TASKS_GENERATOR_IMAGE) $(TASKS_PACKAGE)
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) -f examples/Dockerfile --build-arg BASE_IMAGE=$(WORKER_IMAGE) -t $(TASKS_WORKER_IMAGE) $(TASKS_PACKAGE)
endif

# Copy the images into the kind node: `kind load docker-image` with Docker and, where that fails (Docker's
# containerd image store: kind#3795), an archive of each (`docker save` + `kind load image-archive`), as
# always with podman.
define kind_load_images
	for image in $(APP_IMAGES); do \
	  if [ "$(CONTAINER_ENGINE)" = docker ] && $(KIND) load docker-image --name $(KIND_CLUSTER) $$image; then continue; fi; \
	  echo "loading $$image into kind as an archive"; \
	  $(CONTAINER_ENGINE) save -o $(BIN)/image.tar $$image && \
	  $(KIND) load image-archive --name $(KIND_CLUSTER) $(BIN)/image.tar || exit 1; \
	done; rm -f $(BIN)/image.tar
endef

# The taskqueue chart at this build's image tag: changed code means a new tag, so the pods roll out.
define deploy_chart
	$(HELM_CTX) upgrade --install $(RELEASE) $(CHART_DIR) --namespace $(NAMESPACE) --wait --timeout 5m \
	  --set image.tag=$(IMAGE_TAG) $(TASKS_HELM_ARGS) $(HELM_ARGS)
	$(KCTL) -n $(NAMESPACE) rollout status statefulset/$(FULLNAME)-redis --timeout 180s
	$(KCTL) -n $(NAMESPACE) rollout status deployment/$(GENERATOR) --timeout 180s
	$(KCTL) -n $(NAMESPACE) rollout status deployment/$(WORKER) --timeout 180s
	$(KCTL) -n $(NAMESPACE) rollout status deployment/$(FULLNAME)-exporter --timeout 180s
endef

kind-load: images ## After a code change: rebuild the images, load them into the running cluster, roll the chart out to them
	@echo "==> images $(APP_IMAGES)"
	$(kind_load_images)
	@echo "==> taskqueue at $(IMAGE_TAG)"
	$(deploy_chart)

# -- the cluster -------------------------------------------------------------------------------
doctor: ## Check this machine for make kind-up: the container engine, its CPUs and memory, inotify limits, free ports, tools
	CONTAINER_ENGINE=$(CONTAINER_ENGINE) API_PORT=$(API_PORT) PROMETHEUS_PORT=$(PROMETHEUS_PORT) \
	  GRAFANA_PORT=$(GRAFANA_PORT) bash k8s/doctor.sh

kind-up: doctor tools images ## Create the kind cluster (idempotent), install KEDA, Prometheus+Grafana and the chart
	@echo "==> kind cluster $(KIND_CLUSTER) ($(KIND_NODE_IMAGE))"
	$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --image $(KIND_NODE_IMAGE) --wait 180s
	@echo "==> images $(APP_IMAGES)"
	$(kind_load_images)
	@echo "==> KEDA $(KEDA_CHART_VERSION)"
	$(HELM_CTX) upgrade --install keda keda --repo $(KEDA_CHART_REPO) --version $(KEDA_CHART_VERSION) \
	  --namespace keda --create-namespace -f k8s/keda-values.yaml --wait --timeout 5m
	@echo "==> kube-prometheus-stack $(KPS_CHART_VERSION)"
	$(HELM_CTX) upgrade --install kube-prometheus-stack kube-prometheus-stack --repo $(KPS_CHART_REPO) \
	  --version $(KPS_CHART_VERSION) --namespace monitoring --create-namespace \
	  -f k8s/kube-prometheus-stack-values.yaml --wait --timeout 10m
	@echo "==> taskqueue $(APP_VERSION), images $(IMAGE_TAG) (namespace $(NAMESPACE), restricted Pod Security enforced)"
	$(KCTL) create namespace $(NAMESPACE) --dry-run=client -o yaml | $(KCTL) apply -f -
	$(KCTL) label namespace $(NAMESPACE) --overwrite \
	  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
	$(deploy_chart)
	@echo
	@echo "taskqueue is up in namespace $(NAMESPACE) of cluster kind-$(KIND_CLUSTER). kubectl, kind and helm are in ./bin:"
	@echo '  export PATH="$$PWD/bin:$$PATH"    # kind made kind-$(KIND_CLUSTER) kubectl'"'"'s current context'
	@echo "Next:"
	@echo "  make port-forward    # API :$(API_PORT), Prometheus :$(PROMETHEUS_PORT), Grafana :$(GRAFANA_PORT) (admin / taskqueue-dev-only, dev only); others: make port-forward API_PORT=18000"
	@echo "  curl -s localhost:$(API_PORT)/start; curl -s localhost:$(API_PORT)/list"
	@echo "  kubectl -n $(NAMESPACE) get secret $(FULLNAME)-api-tokens -o jsonpath='{.data.api-tokens}' | base64 -d   # the admin token (cancel, requeue; the CLI reads TASKQUEUE_TOKEN)"
	@echo "  make load            # $(LOAD_JOBS) x /start, then watch: kubectl -n $(NAMESPACE) get scaledobject,hpa,pods -w"
	@echo "  make scale REPLICAS=3   # pin the workers; make autoscale hands them back to KEDA. KEDA owns their count:"
	@echo "                          # a plain 'kubectl -n $(NAMESPACE) scale deployment/$(WORKER)' is undone by its HPA"
	@echo "                          # within ~15 s. make scale pauses KEDA (annotation autoscaling.keda.sh/paused-replicas)."
	@echo "  Prometheus: sum(taskqueue_jobs_enqueued_total), sum(taskqueue_jobs_completed_total)"
	@echo "  make kind-load       # after a code change: rebuild, load, roll out (each build has an image tag of its own)"
	@echo "  make test-kind       # the end-to-end test of the steps above"
	@echo "  make kind-down       # delete the cluster"

kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

port-forward: ## Forward the API (:8000), Prometheus (:9090) and Grafana (:3000) until Ctrl-C (API_PORT=... moves one)
	KUBECTL="$(KCTL)" NAMESPACE=$(NAMESPACE) GENERATOR=$(GENERATOR) API_PORT=$(API_PORT) \
	  PROMETHEUS_PORT=$(PROMETHEUS_PORT) GRAFANA_PORT=$(GRAFANA_PORT) bash k8s/port-forward.sh

# -- scaling -----------------------------------------------------------------------------------
scale: ## Pin the workers at REPLICAS (make scale REPLICAS=3): pauses KEDA so the count sticks; returns once they are ready
	KUBECTL="$(KCTL)" NAMESPACE=$(NAMESPACE) WORKER=$(WORKER) REPLICAS=$(REPLICAS) sh k8s/scale.sh

autoscale: ## Hand the worker count back to KEDA (undoes make scale)
	$(KCTL) -n $(NAMESPACE) annotate scaledobject/$(WORKER) autoscaling.keda.sh/paused-replicas-
	$(KCTL) -n $(NAMESPACE) get scaledobject/$(WORKER)

load: ## Enqueue a burst of LOAD_JOBS /start calls (default 200) with progress
	KUBECTL="$(KCTL)" NAMESPACE=$(NAMESPACE) GENERATOR=$(GENERATOR) \
	  LOAD_JOBS=$(LOAD_JOBS) LOAD_CONCURRENCY=$(LOAD_CONCURRENCY) bash k8s/load.sh
