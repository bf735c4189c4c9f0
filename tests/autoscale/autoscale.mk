# Autoscaling demo (the top Makefile includes this file): the rendered chart's ScaledObject and
# worker Deployment drive tests/autoscale/emulator.py (KEDA + HPA + ReplicaSet + kubelet) on
# loopback, with real Redis, generator, exporter and worker processes. Writes docs/images/autoscale.png.
#   make demo-autoscale                         # the chart's defaults in real time (about 6 minutes)
#   make demo-autoscale DEMO_SPEED=5            # every period and job length / 5 (about 80 s)
#   make demo-autoscale DEMO_VALUES="ours keda-defaults"   # one panel per value set

DEMO_SPEED ?= 1
DEMO_VALUES ?= ours
DEMO_PNG ?= docs/images/autoscale.png

.PHONY: demo-autoscale

demo-autoscale: venv ## Autoscaling demo: load through the generator, emulated KEDA/HPA scaling real workers -> PNG
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(PIP) install -q -c services/constraints.txt -e '.[demo]'
	$(PY) -m tests.autoscale.demo --values $(DEMO_VALUES) --speed $(DEMO_SPEED) --png $(DEMO_PNG)
