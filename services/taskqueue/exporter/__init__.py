"""``taskqueue-exporter``: queue state for Prometheus and autoscaling, and the queue maintenance."""
