"""Stock RQ, the baseline of the Redis-cost and latency benchmarks: ``rq.SimpleWorker`` + JSON serializer."""

from __future__ import annotations

import argparse

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--burst", action="store_true")
    a = p.parse_args()
    conn = Redis(host="127.0.0.1", port=a.port, password=a.password)
    queue = Queue("default", connection=conn, serializer=JSONSerializer)
    SimpleWorker([queue], connection=conn, serializer=JSONSerializer).work(burst=a.burst)


if __name__ == "__main__":
    main()
