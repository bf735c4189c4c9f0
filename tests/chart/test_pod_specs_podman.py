"""The chart's own pod specs run: generator, worker and exporter start from the images built by
tests/images with exactly the rendered command, args, env (ConfigMap and Secret resolved),
securityContext and volumes, on the host network (Service names -> 127.0.0.1); the chart's probes
pass, and the seed's curl flow (/start, /list, /status) goes through them.

The images are a team's, as a user deploys their own tasks (README, "Your own tasks"):
examples/Dockerfile on our two images with examples/csv_summary installed (tests/images/build-tasks.sh),
named by the chart's ``generator.image.repository`` and ``worker.image.repository``. So the same run
shows that our images work as bases, and that a job of the example's task runs through the API in them.

Redis runs from the chart's Redis spec too when its image is in the local store (or TQ_REDIS_IMAGE
names one); CI cannot pull docker.io, so otherwise the chart's rendered start script runs a host
redis-server with the rendered redis.conf, users and passwords instead (said in the test's output).
In sentinel mode (redis.mode=sentinel) that is the first pod's Redis and Sentinel, and the app pods find the
primary through the Sentinel by the names the chart gives them (each Redis pod's DNS name -> 127.0.0.1).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time

import pytest
import requests

from tests.chart import podrun
from tests.chart.rendering import ROOT, Case, find, objects, one, pod_spec, resolve_env, workloads

pytestmark = pytest.mark.images

SEED_RESULT = "Processed message generating task with delay: 1 after 1 seconds"
# The team's images, as make kind-up TASKS_PACKAGE=examples/csv_summary names them.
TASKS_REPOSITORIES = {"generator": "csv-summary-generator", "worker": "csv-summary-worker"}
BUILD_SCRIPTS = ("build-base.sh", "build.sh", "build-tasks.sh")
CSV = "city,population\nOslo,709000\nBergen,291000\n"


def ensure_images(images: list[str]) -> None:
    missing = [i for i in images if not podrun.image_exists(i)]
    if not missing:
        return
    if os.environ.get("CI") != "true":
        pytest.skip(f"images {missing} not built (bash tests/images/{{{','.join(BUILD_SCRIPTS)}}} in turn)")
    for script in BUILD_SCRIPTS:
        subprocess.run(["bash", str(ROOT / "tests" / "images" / script)], check=True, timeout=1800)
    still = [i for i in images if not podrun.image_exists(i)]
    assert not still, f"tests/images/{BUILD_SCRIPTS} did not produce {still}"


@pytest.fixture(params=["standalone", "sentinel"])
def case(request):
    """The default values with the team's images, on free loopback ports (several test runs may share this
    machine); Redis standalone, and in sentinel mode (the apps then find the primary through a Sentinel)."""
    ports = [podrun.free_port() for _ in range(6)]
    values = {
        "generator": {
            "image": {"repository": TASKS_REPOSITORIES["generator"]},
            "httpPort": ports[0],
            "metricsPort": ports[1],
            "service": {"port": ports[0]},
        },
        "worker": {"image": {"repository": TASKS_REPOSITORIES["worker"]}, "metricsPort": ports[2]},
        "exporter": {"metricsPort": ports[3]},
        # One Redis pod runs here, so no replica acknowledges a write: sentinel mode writes without one.
        "redis": {
            "port": ports[4],
            "mode": request.param,
            "sentinel": {"port": ports[5], "minReplicasToWrite": 0},
        },
    }
    c = Case(f"podman-{ports[0]}", values)
    from tests.chart import rendering

    rendering.CASES[c.name] = c
    yield c
    rendering.CASES.pop(c.name, None)


def host_redis(objs, workdir):
    """A host redis-server started as the chart's pod starts it: the rendered start.sh, with the ConfigMap's files
    as /etc/redis (redis.conf moved to loopback and a work folder) and the Secret's keys as /etc/redis-auth."""
    redis = next(w for w in workloads(objs) if w["kind"] == "StatefulSet")
    container = pod_spec(redis)["containers"][0]
    files = one(objs, "ConfigMap", component="redis")["data"]
    secret = one(objs, "Secret", component="redis")["data"]
    conf, auth, run, data = (workdir / d for d in ("conf", "auth", "run", "data"))
    for d in (conf, auth, run, data):
        d.mkdir()
    for key, value in secret.items():
        (auth / key).write_bytes(base64.b64decode(value))
    (conf / "users.acl").write_text(files["users.acl"])
    (conf / "start.sh").write_text(files["start.sh"])
    (conf / "redis.conf").write_text(
        files["redis.conf"]
        .replace("dir /data", f"dir {data}")
        .replace("/run/redis/users.acl", str(run / "users.acl"))
        .replace("bind 0.0.0.0 -::*", "bind 127.0.0.1")
    )
    dirs = {"REDIS_CONF_DIR": conf, "REDIS_AUTH_DIR": auth, "REDIS_RUN_DIR": run}
    env = {"PATH": os.environ["PATH"], **{k: str(v) for k, v in dirs.items()}}
    port = container["ports"][0]["containerPort"]
    procs = []
    if container["command"][-1] == "redis":  # sentinel mode: the first pod's Redis and Sentinel, on 127.0.0.1
        sentinel = pod_spec(redis)["containers"][1]
        sentinel_port = sentinel["ports"][0]["containerPort"]
        pod_env = {e["name"]: e["value"] for e in sentinel["env"] if "value" in e}
        env |= {
            **pod_env,
            "ANNOUNCE_HOST": "127.0.0.1",
            "SENTINELS": f"127.0.0.1:{sentinel_port}",
            "FIRST_PRIMARY": f"127.0.0.1:{port}",
            "BIND": "127.0.0.1",
            "REDIS_DATA_DIR": str(data),
            "SENTINEL_DIR": str(run),
        }
        procs.append(subprocess.Popen(["sh", str(conf / "start.sh"), "sentinel"], env=env, stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["sh", str(conf / "start.sh"), "redis"], env=env, stdout=subprocess.DEVNULL))
    else:
        procs.append(subprocess.Popen(["sh", str(conf / "start.sh")], env=env, stdout=subprocess.DEVNULL))
    password = resolve_env(redis, container, objs)["REDISCLI_AUTH"]  # the admin's, for the probe
    for _ in range(100):
        r = subprocess.run(["redis-cli", "--user", "admin", "-p", str(port), "ping"],
                           env={**os.environ, "REDISCLI_AUTH": password},
                           capture_output=True, text=True, check=False)  # fmt: skip
        if r.stdout.strip() == "PONG":
            return procs
        time.sleep(0.1)
    for proc in procs:
        proc.kill()
    raise AssertionError("host redis-server did not start")


def wait_for(base: str, job_id: str, timeout: float) -> dict:
    """The job's status document once it has ended, or the last one seen after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        doc = requests.get(f"{base}/status/{job_id}", timeout=5).json()
        if doc["status"] in ("finished", "failed") or time.monotonic() > deadline:
            return doc
        time.sleep(0.25)


def test_rendered_pods_run_the_seed_flow_and_a_teams_task(case, tmp_path):
    if shutil.which("podman") is None:
        pytest.fail("podman is needed (apt-get install podman)")
    objs = objects(case)
    apps = {w["metadata"]["labels"]["app.kubernetes.io/component"]: w for w in workloads(objs)}
    images = {comp: podrun.local_image(pod_spec(w)["containers"][0]["image"]) for comp, w in apps.items()
              if comp != "redis"}  # fmt: skip
    # The exporter runs from the generator image: the team's too.
    assert {c: images[c].rsplit("/", 1)[1].split(":")[0] for c in ("generator", "worker", "exporter")} == {
        "generator": "taskqueue-csv-summary-generator",
        "worker": "taskqueue-csv-summary-worker",
        "exporter": "taskqueue-csv-summary-generator",
    }
    ensure_images(sorted(set(images.values())))
    redis_svc = one(objs, "Service", component="redis")
    hosts = {f"{redis_svc['metadata']['name']}.{case.namespace}.svc.cluster.local": "127.0.0.1"}
    sentinels = resolve_env(apps["generator"], pod_spec(apps["generator"])["containers"][0], objs).get(
        "TASKQUEUE_REDIS_SENTINELS", ""
    )
    hosts |= {address.rsplit(":", 1)[0]: "127.0.0.1" for address in sentinels.split(",") if address}
    assert bool(sentinels) == (case.values["redis"]["mode"] == "sentinel")
    runner = podrun.PodRunner(objs, tmp_path, hosts, name_prefix=f"tq-chart-{os.getpid()}")
    redis_procs = []
    try:
        redis_image = os.environ.get("TQ_REDIS_IMAGE") or pod_spec(apps["redis"])["containers"][0]["image"]
        if podrun.image_exists(redis_image):
            name = runner.start(apps["redis"], redis_image)
            runner.wait_ready(name, apps["redis"])
        else:
            print(f"no local {redis_image}: the chart's redis.conf runs on a host redis-server")
            redis_procs = host_redis(objs, tmp_path)
        for comp in ("exporter", "worker", "generator"):
            name = runner.start(apps[comp], images[comp])
            runner.wait_ready(name, apps[comp])

        base = f"http://127.0.0.1:{case.values['generator']['httpPort']}"
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        body = requests.get(f"{base}/start", params={"delay": 1}, timeout=5).json()
        job_id = body["jobId"]
        doc = wait_for(base, job_id, timeout=30)
        assert doc["status"] == "finished", (doc, runner.logs(runner.started[-2]))
        assert doc["result"] == SEED_RESULT
        assert requests.get(f"{base}/list", params={"state": "finished"}, timeout=5).json()["jobs"] == [job_id]
        # Metrics on the chart's ports: the generator's counters, the exporter's queue state.
        gen_metrics = requests.get(f"http://127.0.0.1:{case.values['generator']['metricsPort']}/metrics", timeout=5)
        assert "taskqueue_jobs_enqueued_total" in gen_metrics.text
        exp_metrics = requests.get(f"http://127.0.0.1:{case.values['exporter']['metricsPort']}/metrics", timeout=5)
        assert "taskqueue_redis_up 1.0" in exp_metrics.text
        assert find(objs, "ConfigMap", case.release, case.namespace) is not None

        # The team's task, from the package's entry point in the images: listed, run, its result.
        tasks = {t["name"] for t in requests.get(f"{base}/tasks", timeout=5).json()["tasks"]}
        assert {"csv.summarize", "sleep"} <= tasks
        r = requests.post(f"{base}/jobs", json={"task": "csv.summarize", "args": {"csv_text": CSV}}, timeout=5)
        assert r.status_code == 202, r.text
        doc = wait_for(base, r.json()["jobId"], timeout=30)
        assert doc["status"] == "finished", (doc, runner.logs(runner.started[-2]))
        assert (doc["result"]["rows"], doc["result"]["columns"]["population"]["max"]) == (2, 709000)
    finally:
        runner.stop_all()
        for proc in redis_procs:
            proc.terminate()
            proc.wait(timeout=10)
