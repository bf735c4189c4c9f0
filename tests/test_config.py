"""Configuration: parsing, validation, flags over env, and the README table kept equal to the code."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from taskqueue import config
from tests.support import ROOT


def test_defaults_match_the_seed():
    cfg = config.load({})
    assert (cfg.delay_min, cfg.delay_max) == (20, 30)
    assert cfg.queue == "default"
    assert cfg.retry_intervals == (5, 15)


def test_env_is_parsed_and_flags_win(monkeypatch):
    monkeypatch.setenv("TASKQUEUE_QUEUES", "high, low")
    monkeypatch.setenv("TASKQUEUE_RETRIES", "0")
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, "worker")
    cfg = config.from_args(parser.parse_args(["--worker-class", "fork", "--queues", "only"]))
    assert cfg.queues == ("only",) and cfg.worker_class == "fork" and cfg.retries == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKQUEUE_JOB_TIMEOUT": "soon"}, "TASKQUEUE_JOB_TIMEOUT"),
        ({"TASKQUEUE_DELAY_MIN": "40"}, "delay_min"),
        ({"TASKQUEUE_WORKER_CLASS": "threads"}, "worker_class"),
        ({"TASKQUEUE_WEB_WORKER_CLASS": "eventlet"}, "web_worker_class: one of gevent"),
        ({"TASKQUEUE_REDIS_URL": "http://x"}, "redis_url"),
        ({"TASKQUEUE_METRICS_ENABLED": "maybe"}, "TASKQUEUE_METRICS_ENABLED"),
        ({"TASKQUEUE_QUEUES": " , "}, "queues"),
        (
            {"TASKQUEUE_REDIS_SENTINELS": "sentinel-0,sentinel-1:26379"},
            "redis_sentinels: host:port expected, not sentinel-0",
        ),
        ({"TASKQUEUE_REDIS_SENTINELS": "h:0"}, "redis_sentinels"),
        ({"TASKQUEUE_REDIS_SENTINELS": "h:26379", "TASKQUEUE_REDIS_MASTER_NAME": ""}, "redis_master_name"),
        ({"TASKQUEUE_REDIS_SENTINELS": "h:26379", "TASKQUEUE_REDIS_URL": "unix:///r.sock"}, "unix"),
    ],
)
def test_bad_values_are_named(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env)


def test_readme_config_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    start = readme.index(config.TABLE_START) + len(config.TABLE_START)
    end = readme.index(config.TABLE_END)
    assert readme[start:end].strip() == config.markdown_table().strip(), "run: make docs"


def test_every_setting_is_a_config_field():
    assert [s.name for s in config.SETTINGS] == [f.name for f in dataclasses.fields(config.Config)]


def test_sentinel_addresses_are_host_port_pairs():
    assert config.host_port("redis-0.redis:26379") == ("redis-0.redis", 26379)
    assert config.host_port("[::1]:26379") == ("::1", 26379)
    cfg = config.load({"TASKQUEUE_REDIS_SENTINELS": " a:1 , b:2 ,"})
    assert cfg.redis_sentinels == ("a:1", "b:2") and cfg.redis_master_name == "taskqueue"
