"""Benchmarks of taskqueue against its baselines (the seed app, stock RQ, Celery), run side by side.

``python -m bench --help`` lists them; ``make bench`` runs all, ``make bench-quick`` a smoke run.
"""
