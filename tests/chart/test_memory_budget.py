"""The chart's Redis memory budget holds together: maxmemory, the pod's limit, the app's limits and TTLs."""

from __future__ import annotations

import re

from taskqueue import config as config_module
from tests.chart.rendering import CASES, objects, one

UNITS = {"": 1, "b": 1, "kb": 1000, "k": 1000, "mb": 10**6, "m": 10**6, "gb": 10**9, "g": 10**9}
K8S_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}
# Bytes a finished job of the built-in tasks holds with the chart's Redis settings (python -m bench memory:
# 1.7-1.8 kB; a failed one ~2 kB); the budget below must hold at least an hour of this many jobs a second.
FINISHED_JOB_BYTES = 2000
JOBS_PER_SECOND_FOR_AN_HOUR = 25


def redis_conf() -> dict[str, str]:
    conf = one(objects(CASES["defaults"]), "ConfigMap", component="redis")["data"]["redis.conf"]
    return dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))


def redis_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", value.lower()).groups()
    return int(number) * UNITS[unit]


def k8s_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", value).groups()
    return int(number) * K8S_UNITS[unit]


def app_config() -> config_module.Config:
    data = one(objects(CASES["defaults"]), "ConfigMap", name="taskqueue")["data"]
    return config_module.load(environ=data)


def test_redis_never_evicts_and_is_configured_for_small_job_records():
    conf = redis_conf()
    assert conf["maxmemory-policy"] == "noeviction"  # RQ's records must not vanish
    assert conf["stream-node-max-bytes"] == "512"
    assert conf["hash-max-listpack-value"] == "256"


def test_the_pod_has_room_beyond_maxmemory_and_the_budget_holds_an_hour_of_jobs():
    maxmemory = redis_bytes(redis_conf()["maxmemory"])
    redis = one(objects(CASES["defaults"]), "StatefulSet", component="redis")
    container = next(c for c in redis["spec"]["template"]["spec"]["containers"] if c["name"] == "redis")
    assert k8s_bytes(container["resources"]["limits"]["memory"]) >= 1.25 * maxmemory  # AOF rewrite's fork
    cfg = app_config()
    assert 50 <= cfg.redis_memory_limit < 100
    budget = maxmemory * cfg.redis_memory_limit / 100
    assert budget >= JOBS_PER_SECOND_FOR_AN_HOUR * cfg.result_ttl * FINISHED_JOB_BYTES
    # One result at its largest fits many times over in what the limit leaves for running jobs.
    assert maxmemory - budget >= 100 * cfg.max_result_bytes
