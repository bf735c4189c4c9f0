# kind targets (the top Makefile includes this file): a local Kubernetes with KEDA, Prometheus,
# Grafana and the taskqueue chart. Docker is the only prerequisite: `make tools` fetches the pinned
# kind, kubectl and helm into ./bin. Every version is in k8s/versions.mk.
include k8s/versions.mk

KIND_CLUSTER ?= taskqueue
NAMESPACE ?= taskqueue
RELEASE ?= taskqueue
CONTAINER_ENGINE ?= docker
# Extra flags for `helm upgrade --install` of the taskqueue chart, e.g. "--set worker.processes=2".
HELM_ARGS ?=
# `make load`: how many /start calls, how many at once.
LOAD_JOBS ?= 200
LOAD_CONCURRENCY ?= 10

BIN := $(CURDIR)/bin
OS := $(shell uname -s | tr '[:upper:]' '[:lower:]')
ARCH := $(shell uname -m | sed -e 's/x86_64/amd64/' -e 's/aarch64/arm64/')
KIND := $(BIN)/kind
KUBECTL := $(BIN)/kubectl
HELM := $(BIN)/helm
# Every kubectl/helm call names the kind cluster's context: no other cluster is ever touched.
KUBE_CONTEXT := kind-$(KIND_CLUSTER)
KCTL := $(KUBECTL) --context $(KUBE_CONTEXT)
HELM_CTX := $(HELM) --kube-context $(KUBE_CONTEXT)

# Our images: names from the chart's values.yaml, tag = the chart's appVersion (one place).
CHART_DIR := helm/taskqueue
APP_VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$$/\1/p' $(CHART_DIR)/Chart.yaml)
GENERATOR_IMAGE := taskqueue-generator:$(APP_VERSION)
WORKER_IMAGE := taskqueue-worker:$(APP_VERSION)
APP_IMAGES := $(GENERATOR_IMAGE) $(WORKER_IMAGE)

# Your own tasks (README, "Your own tasks"): TASKS_PACKAGE=examples/csv_summary (any directory with an
# installable package of tasks) builds examples/Dockerfile on both images with the package installed,
# as <name>-generator and <name>-worker (<name>: the directory's name, _ as -), loads those into kind
# and installs the chart with them (the exporter runs from the generator image).
TASKS_PACKAGE ?=
ifneq ($(strip $(TASKS_PACKAGE)),)
TASKS_NAME := $(subst _,-,$(notdir $(abspath $(TASKS_PACKAGE))))
TASKS_GENERATOR_IMAGE := $(TASKS_NAME)-generator:$(APP_VERSION)
TASKS_WORKER_IMAGE := $(TASKS_NAME)-worker:$(APP_VERSION)
APP_IMAGES := $(TASKS_GENERATOR_IMAGE) $(TASKS_WORKER_IMAGE)
TASKS_HELM_ARGS := --set generator.image.repository=$(TASKS_NAME)-generator --set worker.image.repository=$(TASKS_NAME)-worker
endif

# The chart's fullname: the release name when it contains "taskqueue", else <release>-taskqueue.
FULLNAME := $(if $(findstring taskqueue,$(RELEASE)),$(RELEASE),$(RELEASE)-taskqueue)
GENERATOR := $(FULLNAME)-generator
WORKER := $(FULLNAME)-worker

.PHONY: tools images kind-up kind-down kind-load port-forward scale autoscale load

# -- tools: pinned binaries in ./bin; a stamp per version re-fetches on a bump -----------------
tools: $(BIN)/.kind-$(KIND_VERSION) $(BIN)/.kubectl-$(KUBECTL_VERSION) $(BIN)/.helm-$(HELM_VERSION) ## Fetch pinned kind, kubectl and helm into ./bin (when missing)

$(BIN)/.kind-$(KIND_VERSION):
	mkdir -p $(BIN)
	curl -fsSLo $(KIND).download https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-$(OS)-$(ARCH)
	echo "$$(curl -fsSL https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-$(OS)-$(ARCH).sha256sum | cut -d' ' -f1)  $(KIND).download" | sha256sum -c -
	chmod +x $(KIND).download && mv $(KIND).download $(KIND)
	touch $@

$(BIN)/.kubectl-$(KUBECTL_VERSION):
	mkdir -p $(BIN)
	curl -fsSLo $(KUBECTL).download https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$(OS)/$(ARCH)/kubectl
	echo "$$(curl -fsSL https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$(OS)/$(ARCH)/kubectl.sha256)  $(KUBECTL).download" | sha256sum -c -
	chmod +x $(KUBECTL).download && mv $(KUBECTL).download $(KUBECTL)
	touch $@

$(BIN)/.helm-$(HELM_VERSION):
	mkdir -p $(BIN)/helm-extract
	curl -fsSLo $(BIN)/helm.tar.gz https://get.helm.sh/helm-$(HELM_VERSION)-$(OS)-$(ARCH).tar.gz
	echo "$$(curl -fsSL https://get.helm.sh/helm-$(HELM_VERSION)-$(OS)-$(ARCH).tar.gz.sha256sum | cut -d' ' -f1)  $(BIN)/helm.tar.gz" | sha256sum -c -
	tar -xzf $(BIN)/helm.tar.gz -C $(BIN)/helm-extract
	mv $(BIN)/helm-extract/$(OS)-$(ARCH)/helm $(HELM)
	rm -rf $(BIN)/helm.tar.gz $(BIN)/helm-extract
	touch $@

# -- images ------------------------------------------------------------------------------------
images: ## Build the generator and worker images (CONTAINER_ENGINE=docker|podman; TASKS_PACKAGE=dir adds your tasks)
	$(CONTAINER_ENGINE) build -f services/Dockerfile --target generator -t $(GENERATOR_IMAGE) .
	$(CONTAINER_ENGINE) build -f services/Dockerfile --target worker -t $(WORKER_IMAGE) .
ifneq ($(strip $(TASKS_PACKAGE)),)
	$(CONTAINER_ENGINE) build -f examples/Dockerfile --build-arg BASE_IMAGE=$(GENERATOR_IMAGE) -t $(TASKS_GENERATOR_IMAGE) $(TASKS_PACKAGE)
	$(CONTAINER_ENGINE) build -f examples/Dockerfile --build-arg BASE_IMAGE=$(WORKER_IMAGE) -t $(TASKS_WORKER_IMAGE) $(TASKS_PACKAGE)
endif

# Copy the images into the kind node: `kind load docker-image` with Docker, an archive otherwise.
ifeq ($(CONTAINER_ENGINE),docker)
define kind_load_images
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(APP_IMAGES)
endef
else
define kind_load_images
	for image in $(APP_IMAGES); do \
	  $(CONTAINER_ENGINE) save -o $(BIN)/image.tar $$image && \
	  $(KIND) load image-archive --name $(KIND_CLUSTER) $(BIN)/image.tar || exit 1; \
	done; rm -f $(BIN)/image.tar
endef
endif

kind-load: ## Load the built images into the running kind cluster again (after make images)
	$(kind_load_images)

# -- the cluster -------------------------------------------------------------------------------
kind-up: tools images ## Create the kind cluster (idempotent), install KEDA, Prometheus+Grafana and the chart
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
	@echo "==> taskqueue $(APP_VERSION) (namespace $(NAMESPACE), restricted Pod Security enforced)"
	$(KCTL) create namespace $(NAMESPACE) --dry-run=client -o yaml | $(KCTL) apply -f -
	$(KCTL) label namespace $(NAMESPACE) --overwrite \
	  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
	$(HELM_CTX) upgrade --install $(RELEASE) $(CHART_DIR) --namespace $(NAMESPACE) --wait --timeout 5m $(TASKS_HELM_ARGS) $(HELM_ARGS)
	$(KCTL) -n $(NAMESPACE) rollout status statefulset/$(FULLNAME)-redis --timeout 180s
	$(KCTL) -n $(NAMESPACE) rollout status deployment/$(GENERATOR) --timeout 180s
	$(KCTL) -n $(NAMESPACE) rollout status deployment/$(WORKER) --timeout 180s
	$(KCTL) -n $(NAMESPACE) rollout status deployment/$(FULLNAME)-exporter --timeout 180s
	@echo
	@echo "taskqueue is up. Next:"
	@echo "  make port-forward    # API :8000, Prometheus :9090, Grafana :3000 (admin / taskqueue-dev-only, dev only)"
	@echo "  curl -s localhost:8000/start; curl -s localhost:8000/list"
	@echo "  $(KCTL) -n $(NAMESPACE) get secret $(FULLNAME)-api-tokens -o jsonpath='{.data.api-tokens}' | base64 -d   # the admin token (cancel, requeue; the CLI reads TASKQUEUE_TOKEN)"
	@echo "  make load            # $(LOAD_JOBS) x /start, then watch: $(KUBECTL) --context $(KUBE_CONTEXT) -n $(NAMESPACE) get scaledobject,hpa,pods -w"
	@echo "  make scale REPLICAS=3 / make autoscale"
	@echo "  Prometheus: sum(taskqueue_jobs_enqueued_total), sum(taskqueue_jobs_completed_total)"
	@echo "  make kind-down       # delete the cluster"

kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

port-forward: ## Forward the API (:8000), Prometheus (:9090) and Grafana (:3000) until Ctrl-C
	KUBECTL="$(KCTL)" NAMESPACE=$(NAMESPACE) GENERATOR=$(GENERATOR) k8s/port-forward.sh

# -- scaling -----------------------------------------------------------------------------------
scale: ## Pin the workers at REPLICAS (make scale REPLICAS=3): pauses KEDA so the count sticks
	@test -n "$(REPLICAS)" || { echo "usage: make scale REPLICAS=n" >&2; exit 2; }
	if $(KCTL) -n $(NAMESPACE) get scaledobject/$(WORKER) >/dev/null 2>&1; then \
	  $(KCTL) -n $(NAMESPACE) annotate scaledobject/$(WORKER) --overwrite autoscaling.keda.sh/paused-replicas=$(REPLICAS); \
	else \
	  $(KCTL) -n $(NAMESPACE) scale deployment/$(WORKER) --replicas=$(REPLICAS); \
	fi
	$(KCTL) -n $(NAMESPACE) get deployment/$(WORKER)

autoscale: ## Hand the worker count back to KEDA (undoes make scale)
	$(KCTL) -n $(NAMESPACE) annotate scaledobject/$(WORKER) autoscaling.keda.sh/paused-replicas-
	$(KCTL) -n $(NAMESPACE) get scaledobject/$(WORKER)

load: ## Enqueue a burst of LOAD_JOBS /start calls (default 200) with progress
	KUBECTL="$(KCTL)" NAMESPACE=$(NAMESPACE) GENERATOR=$(GENERATOR) \
	  LOAD_JOBS=$(LOAD_JOBS) LOAD_CONCURRENCY=$(LOAD_CONCURRENCY) k8s/load.sh
