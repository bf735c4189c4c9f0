"""`make doctor` answers as a laptop would make it answer, and the kind setup's host scripts run on macOS.

No Docker here: fakes of `docker info`, `podman info`, `sysctl`, `uname` and `lsof` (shell scripts first on
PATH, answering as the real tools do) stand for the machines. macOS's /bin/bash is 3.2 and no bash 3.2
exists on Debian, so a scan refuses the constructs bash 3.2 lacks (and GNU-only flags of the tools) in every
k8s/*.sh; shellcheck lints them all.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.rendering import ROOT

DOCTOR = ROOT / "k8s" / "doctor.sh"
SCRIPTS = sorted((ROOT / "k8s").glob("*.sh"))
GIB = 1024**3
# `docker info`'s answer to the doctor's --format: CPUs, memory bytes, storage driver, version, OS.
GOOD_DOCKER = f"8 {16 * GIB} overlay2 29.0.1 Docker Desktop"


def fake(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def doctor(tmp_path: Path, docker: str | None = GOOD_DOCKER, watches: int = 524288, instances: int = 512,
           system: str = "Linux", tools: dict[str, str] | None = None, hide: tuple[str, ...] = (),
           **env: str) -> tuple[int, str]:  # fmt: skip
    """Run the doctor with fakes: ``docker`` the info line (None: the daemon is down), ``hide`` tools to remove."""
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    if docker is None:
        fake(bindir, "docker", 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. '
             'Is the docker daemon running?" >&2; exit 1')  # fmt: skip
    else:
        fake(bindir, "docker", f'[ "$1" = info ] && echo "{docker}"')
    fake(bindir, "sysctl", f'case "$2" in *watches) echo {watches} ;; *instances) echo {instances} ;; esac')
    fake(bindir, "uname", f'echo "{system}"')
    if "lsof" not in hide:
        fake(bindir, "lsof", "exit 1")  # nothing listens, unless a test says otherwise
    for name, body in (tools or {}).items():
        fake(bindir, name, body)
    # The machine's own tools for the rest, without those a test hides.
    path = str(bindir)
    if hide:
        shadow = tmp_path / "shadow"
        shadow.mkdir(exist_ok=True)
        for d in ("/usr/local/bin", "/usr/bin", "/bin"):
            for tool in Path(d).iterdir() if Path(d).is_dir() else ():
                if tool.name not in hide and not (shadow / tool.name).exists():
                    (shadow / tool.name).symlink_to(tool)
        path += f":{shadow}"
    else:
        path += ":" + os.environ["PATH"]
    proc = subprocess.run(["bash", str(DOCTOR)], env={"PATH": path, "HOME": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_a_ready_machine_passes_every_check(tmp_path):
    rc, out = doctor(tmp_path)
    assert rc == 0, out
    assert "FAIL" not in out and "WARN" not in out, out
    assert "ok   docker 29.0.1 on Docker Desktop, storage driver overlay2" in out
    assert "ok   8 CPUs and 16384 MiB for containers" in out


def test_docker_not_running_fails_and_says_how_to_start_it(tmp_path):
    rc, out = doctor(tmp_path, docker=None)
    assert rc == 1
    assert "FAIL docker does not answer (Cannot connect to the Docker daemon" in out and "start Docker" in out


def test_docker_desktops_default_of_2_cpus_and_2_gib_is_too_little(tmp_path):
    rc, out = doctor(tmp_path, docker=f"2 {2 * GIB} overlay2 29.0.1 Docker Desktop")
    assert rc == 1
    line = next(x for x in out.splitlines() if x.startswith("FAIL 2 CPUs and 2048 MiB"))
    assert "Settings > Resources" in line and "autoscaling.maxReplicaCount" in line
    # Just enough: a warning, not a failure.
    rc, out = doctor(tmp_path, docker=f"3 {3 * GIB} overlay2 29.0.1 Docker Desktop")
    assert rc == 0 and "WARN 3 CPUs and 3072 MiB" in out


def test_low_inotify_limits_warn_with_kinds_fix(tmp_path):
    rc, out = doctor(tmp_path, watches=8192, instances=128)
    assert rc == 0
    assert "WARN inotify limits 8192 watches, 128 instances" in out
    assert "sudo sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512" in out
    # macOS: the limits are inside Docker Desktop's VM; sysctl is not asked.
    rc, out = doctor(tmp_path, watches=8192, instances=128, system="Darwin")
    assert rc == 0 and "inotify limits: set inside Docker Desktop's VM" in out


def test_a_taken_port_warns_naming_another(tmp_path):
    rc, out = doctor(tmp_path, tools={"lsof": 'case "$*" in *TCP:8000*) exit 0 ;; *) exit 1 ;; esac'})
    assert rc == 0
    assert (
        "WARN port 8000 is taken: make port-forward will skip it; choose another: make port-forward API_PORT=18000"
        in out
    )
    assert "ok   port 9090 free" in out
    # Without lsof: bash's /dev/tcp finds a real listener.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, out = doctor(tmp_path / "no-lsof", hide=("lsof",), GRAFANA_PORT=str(port))
    assert rc == 0 and f"WARN port {port} is taken" in out and "GRAFANA_PORT=" in out, out


def test_shasum_stands_in_for_sha256sum_and_podman_for_docker(tmp_path):
    rc, out = doctor(tmp_path / "shasum", hide=("sha256sum",), tools={"shasum": "exit 0"})
    assert rc == 0 and "ok   shasum -a 256 (no sha256sum)" in out
    rc, out = doctor(tmp_path / "neither", hide=("sha256sum", "shasum"))
    assert rc == 1 and "FAIL no sha256sum or shasum" in out
    podman = f'[ "$1" = info ] && echo "6 {12 * GIB} overlay 5.4.2 debian"'
    rc, out = doctor(tmp_path / "podman", tools={"podman": podman}, CONTAINER_ENGINE="podman")
    assert rc == 0 and "ok   podman 5.4.2 on debian, storage driver overlay" in out, out
    rc, out = doctor(tmp_path, docker=f"8 {16 * GIB} vfs 29.0.1 Ubuntu")
    assert "WARN storage driver vfs" in out


def resources(values: dict) -> tuple[int, int]:
    """Sum every requests: {cpu, memory} in a values tree: (millicores, MiB)."""
    cpu = mem = 0
    if isinstance(values, dict):
        req = values.get("requests") if isinstance(values.get("requests"), dict) else None
        if req and "cpu" in req:
            c, m = str(req["cpu"]), str(req["memory"])
            cpu += int(c[:-1]) if c.endswith("m") else int(float(c) * 1000)
            mem += int(m[:-2]) * (1024 if m.endswith("Gi") else 1)
        for v in values.values():
            c2, m2 = resources(v)
            cpu, mem = cpu + c2, mem + m2
    elif isinstance(values, list):
        for v in values:
            c2, m2 = resources(v)
            cpu, mem = cpu + c2, mem + m2
    return cpu, mem


def test_the_doctors_figures_cover_what_the_stack_requests():
    """A values change that raises the stack's requests fails here until k8s/doctor.sh's figures follow."""
    kps = resources(yaml.safe_load((ROOT / "k8s" / "kube-prometheus-stack-values.yaml").read_text()))
    keda = resources(yaml.safe_load((ROOT / "k8s" / "keda-values.yaml").read_text()))
    values = yaml.safe_load((ROOT / "helm" / "taskqueue" / "values.yaml").read_text())
    ours = (0, 0)
    for comp, count in (("generator", values["generator"]["replicas"]), ("exporter", 1), ("redis", 1),
                        ("worker", values["autoscaling"]["maxReplicaCount"])):  # fmt: skip
        c, m = resources(values[comp]["resources"])
        ours = (ours[0] + c * count, ours[1] + m * count)
    control_plane = (950, 400)  # kind's node: apiserver, controller-manager, scheduler, etcd, CoreDNS x2, kindnet
    need_cpu = kps[0] + keda[0] + ours[0] + control_plane[0]
    need_mem = kps[1] + keda[1] + ours[1] + control_plane[1]
    text = DOCTOR.read_text()
    cpu = int(re.search(r"REQUIRED_CPU_MILLI:=(\d+)", text).group(1))
    mem = int(re.search(r"REQUIRED_MEMORY_MIB:=(\d+)", text).group(1))
    assert cpu >= need_cpu and mem >= need_mem, (need_cpu, need_mem)


# Constructs macOS's bash 3.2 lacks, and flags only GNU's tools have: (pattern, why).
BASH4_ONLY = [
    (r"\bwait\s+-n\b", "wait -n (bash 4.3)"),
    (r"\b(declare|typeset|local)\s+-A\b", "associative arrays (bash 4)"),
    (r"\b(mapfile|readarray)\b", "mapfile/readarray (bash 4)"),
    (r"\$\{[A-Za-z_][A-Za-z0-9_]*(,,|\^\^|,|\^)\}", "case modification ${v,,} (bash 4)"),
    (r"&>>|\|&", "&>> and |& (bash 4)"),
    (r"\[\[\s+-v\b", "[[ -v (bash 4.2)"),
    (r"\$\{[A-Za-z_][A-Za-z0-9_]*\[-\d+\]\}", "negative array index (bash 4.3)"),
    (r"\bsed\s+(-[a-zA-Z]*\s+)*-i(\s|$)(?!\S*'')", "sed -i without a suffix (GNU)"),
    (r"\bgrep\s+(-[a-zA-Z]*\s+)*-[a-zA-Z]*P", "grep -P (GNU)"),
    (r"\breadlink\s+-f\b", "readlink -f (GNU, macOS 12.3+)"),
    (r"\bdate\s+(-[a-zA-Z]*\s+)*-d\b", "date -d (GNU)"),
    (r"\bstat\s+-c\b", "stat -c (GNU)"),
    (r"\bsha256sum\s+-c\b", "sha256sum alone (macOS has shasum -a 256)"),
]


def bash4_constructs(path: Path) -> list[str]:
    """ "name:line: why: line" for each construct of BASH4_ONLY in a script (comment lines skipped)."""
    found = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        code = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0]
        found += [f"{path.name}:{n}: {why}: {line.strip()}" for pattern, why in BASH4_ONLY if re.search(pattern, code)]
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path):
    script = tmp_path / "old.sh"
    script.write_text(
        'wait -n "$a"\ndeclare -A m\nx=${y,,}\n# wait -n in a comment\nsed -i "s/a/b/" f\nsed -i \'\' f\n'
    )
    whys = [f.split(": ")[1] for f in bash4_constructs(script)]
    assert whys == ["wait -n (bash 4.3)", "associative arrays (bash 4)", "case modification ${v,,} (bash 4)",
                    "sed -i without a suffix (GNU)"]  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_host_scripts_use_nothing_bash_3_2_or_macos_lacks(script):
    assert bash4_constructs(script) == []


def test_host_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is needed in CI (apt-get install shellcheck; .ci/run installs it)")
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    scripts = [*SCRIPTS, ROOT / "helm" / "taskqueue" / "files" / "redis-start.sh"]  # and the Redis pod's
    proc = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
