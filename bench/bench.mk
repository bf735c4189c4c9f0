# Benchmarks (bench/): included by the top Makefile. Results go to bench/results/*.json (git-ignored).
# Each benchmark starts its own redis-server, generator and workers on 127.0.0.1 and runs the baseline
# (the seed app, stock RQ, Celery in bench/.venv-celery made on demand) in the same run.
BENCH_ARGS ?=

.PHONY: bench bench-stock bench-quick bench-profile

bench: venv ## Run every benchmark (3 repeats; /start at wrk -t1 -c16, -c4, -c6, -c8, 5 s each; ~10 min on 2 cores): `make bench BENCH_ARGS="start worker"`
	$(PY) -m bench $(BENCH_ARGS)

bench-stock: venv ## The same with TASKQUEUE_FAST_PATHS=off (results in bench/results-fast-paths-off/)
	$(PY) -m bench --fast-paths off $(BENCH_ARGS)

bench-quick: venv ## Smoke-run every benchmark (1 repeat, 2 s loads, small N; ~2 min)
	$(PY) -m bench --quick $(BENCH_ARGS)

bench-profile: venv ## py-spy profiles of the worker's per-job path and of /start under wrk (bench/results/profile*.)
	$(PY) -m bench.profile
