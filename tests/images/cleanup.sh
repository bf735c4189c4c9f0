#!/usr/bin/env bash
# Remove every container and image of the image tests, then their whole storage (TQ_IMAGES_STORE).
# The base tarball cache (TQ_IMAGES_CACHE) is kept: it is what makes the next run fast.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
if [[ -d $TQ_IMAGES_STORE ]]; then
  tq_podman rm --all --force --time 0 >/dev/null 2>&1 || true
  tq_podman rmi --all --force >/dev/null 2>&1 || true
  # Unmount anything podman still holds before deleting the tree.
  tq_podman system reset --force >/dev/null 2>&1 || true
  rm -rf "$TQ_IMAGES_STORE"
fi
tq_log "removed container storage $TQ_IMAGES_STORE"
