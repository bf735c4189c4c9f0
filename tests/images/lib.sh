# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this file
# Shared settings of the image scripts: sourced, not run.
#
# Every podman/buildah call goes to a storage of our own (vfs, under TQ_IMAGES_STORE), so the
# scripts never touch the machine's default container storage and cleanup is one `rm -rf`.
# vfs because overlay needs kernel support this CI machine (itself a container) may not give us;
# runc + cgroupfs because there is no systemd to manage cgroups for crun/systemd.

TQ_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Tarball cache of the debootstrapped base; .cache/ is git-ignored. Reused across runs.
TQ_IMAGES_CACHE="${TQ_IMAGES_CACHE:-$TQ_REPO_ROOT/.cache/images}"
# Container storage (several GB with vfs): outside the work tree, removed by cleanup.sh.
TQ_IMAGES_STORE="${TQ_IMAGES_STORE:-/var/tmp/taskqueue-images}"
TQ_BASE_IMAGE="${TQ_BASE_IMAGE:-localhost/taskqueue-base:bookworm}"
# Images are <prefix>-generator:<tag> and <prefix>-worker:<tag>, the names the chart uses.
TQ_IMAGE_PREFIX="${TQ_IMAGE_PREFIX:-localhost/taskqueue}"
# Default tag: the package version (the chart's appVersion).
TQ_IMAGE_TAG="${TQ_IMAGE_TAG:-$(sed -nE 's/^version *= *"([^"]+)".*/\1/p' "$TQ_REPO_ROOT/pyproject.toml" | head -n1)}"

# Options every podman/buildah command takes (global flags before the subcommand).
TQ_STORAGE_OPTS=(--root "$TQ_IMAGES_STORE/root" --runroot "$TQ_IMAGES_STORE/run" --storage-driver vfs)

# This machine's hard limits are below podman's defaults; runc fails to set higher ones.
TQ_ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

tq_podman() {
  podman "${TQ_STORAGE_OPTS[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend file "$@"
}

tq_buildah() {
  buildah "${TQ_STORAGE_OPTS[@]}" "$@"
}

# Build options every image build takes.
TQ_BUILD_OPTS=(
  # chroot: no nested user/mount namespaces needed; host network: pip reaches the index.
  --isolation chroot --network host
  "${TQ_ULIMITS[@]}"
  # No intermediate layers: with vfs every committed layer is a full copy of the root
  # filesystem (3-5 s each); building the builder stage twice is cheaper (~40 s a target).
  --layers=false
  # Never try a registry: the bases are local.
  --pull-never
)

# tq_pip_secrets DIR: write DIR/pip.conf and DIR/pip-cert for `--secret id=pip.conf,...`.
# The pip settings of this machine are read now (pip_secrets.py) and passed to the build as
# secrets, so they reach pip in the build and no layer and no file in the repository.
tq_pip_secrets() {
  python3 "$TQ_REPO_ROOT/tests/images/pip_secrets.py" "$1"
}

tq_log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
