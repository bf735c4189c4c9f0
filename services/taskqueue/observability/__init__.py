"""Prometheus metrics (multiprocess), JSON logs with the job id."""
