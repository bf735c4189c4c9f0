#!/usr/bin/env bash
# Build the generator and worker images from services/Dockerfile with podman (buildah inside),
# against the local base from build-base.sh: chroot isolation, vfs storage, host network.
#
# The pip settings of this machine reach pip in the builder stage as build secrets (tq_pip_secrets).
#
# Env: TQ_BASE_IMAGE, TQ_IMAGE_PREFIX, TQ_IMAGE_TAG, TQ_IMAGES_STORE (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$TQ_REPO_ROOT"

tag="$TQ_IMAGE_TAG"

secrets_dir="$(mktemp -d "${TMPDIR:-/tmp}/tq-build-secrets.XXXXXX")"
trap 'rm -rf "$secrets_dir"' EXIT
chmod 700 "$secrets_dir"

tq_pip_secrets "$secrets_dir"

build_opts=(
  --file services/Dockerfile
  --build-arg "BASE_IMAGE=$TQ_BASE_IMAGE"
  "${TQ_BUILD_OPTS[@]}"
  --secret "id=pip.conf,src=$secrets_dir/pip.conf"
  --secret "id=pip-cert,src=$secrets_dir/pip-cert"
)

build_target() {
  local target=$1 image="$TQ_IMAGE_PREFIX-$1:$tag" log="$secrets_dir/build-$1.log"
  tq_log "building $image (target $target, base $TQ_BASE_IMAGE)"
  if tq_podman build "${build_opts[@]}" --target "$target" --tag "$image" . >"$log" 2>&1; then
    tq_log "built $image"
  else
    tail -n 60 "$log" >&2
    tq_log "FAILED to build $image"
    return 1
  fi
}

# One after the other: in parallel they take as long on two cores and interleave their output.
for target in worker generator; do
  build_target "$target"
done
tq_podman image ls --filter "reference=$TQ_IMAGE_PREFIX-*" >&2
