#!/usr/bin/env bash
# Print the size of the base, generator and worker images: on disk (uncompressed, as podman counts
# it) and compressed (`podman save` of the image, gzip -6: close to what a registry stores and a
# node pulls). Also the venv alone, which is what the images add to their base besides one user.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

images=("$TQ_BASE_IMAGE" "$TQ_IMAGE_PREFIX-generator:$TQ_IMAGE_TAG" "$TQ_IMAGE_PREFIX-worker:$TQ_IMAGE_TAG")
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# Compress in parallel: gzip is the slow part and CI has two cores.
for i in "${!images[@]}"; do
  (tq_podman save --quiet --format docker-archive "${images[$i]}" | gzip -6 | wc -c >"$out/$i") &
done
wait
printf '%-44s %12s %12s\n' image "on disk" compressed
for i in "${!images[@]}"; do
  size="$(tq_podman image inspect --format '{{.Size}}' "${images[$i]}")"
  printf '%-44s %12s %12s\n' "${images[$i]}" "$(mb "$size")" "$(mb "$(cat "$out/$i")")"
done
venv="$(tq_podman run --rm "${TQ_ULIMITS[@]}" --network none --pull never --entrypoint du \
  "$TQ_IMAGE_PREFIX-worker:$TQ_IMAGE_TAG" -sb /opt/taskqueue | cut -f1)"
printf '%-44s %12s\n' "/opt/taskqueue (the venv both images add)" "$(mb "$venv")"
