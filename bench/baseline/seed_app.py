"""The seed's generator.py, the baseline of the /start benchmark.

Adapted only to read the Redis host, port and password (and the listen port) from the environment;
otherwise it is the seed's code: the default (pickle) serializer, RQ's default queue, Flask's dev
server via ``app.run``. Run it from this folder so that ``from worker import save_to_file`` resolves
to the seed's ``worker.py`` beside it: ``python bench/baseline/seed_app.py``.
"""

import os
import random
import time  # noqa: F401 (the seed imports it)
import unicodedata  # noqa: F401 (the seed imports it)
from crypt import methods  # noqa: F401 (the seed imports it; deprecated in 3.11, still present)

from flask import Flask, request  # noqa: F401 (the seed imports request)
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry
from worker import save_to_file

r = Redis(
    host=os.environ.get("SEED_REDIS_HOST", "127.0.0.1"),
    port=int(os.environ.get("SEED_REDIS_PORT", "6379")),
    password=os.environ.get("SEED_REDIS_PASSWORD") or None,
)
queue = Queue(connection=r)

app = Flask(__name__)


@app.route("/start")
def start():
    delayTime = random.randint(20, 30)
    msg = f"generating task with delay: {delayTime}"
    job = queue.enqueue(save_to_file, msg, delayTime)
    response = {
        "jobId": job.id,
        "timeOfEnqueue": job.enqueued_at,
        "message": f"{msg} with id: {job.id} added to queue at {job.enqueued_at}",
    }
    return response


@app.route("/list")
def getList():
    registry = StartedJobRegistry("default", connection=r)
    running_job_ids = registry.get_job_ids()  # Jobs which are exactly running.
    return {"jobs": running_job_ids}


@app.route("/status/<id>")
def getStatus(id):
    job = Job.fetch(id, connection=r)
    return {"result": job.result}


if __name__ == "__main__":
    app.run(host=os.environ.get("SEED_HOST", "127.0.0.1"), port=int(os.environ.get("SEED_PORT", "5000")))
