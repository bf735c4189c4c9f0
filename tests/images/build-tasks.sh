#!/usr/bin/env bash
# Build a team's images: examples/Dockerfile on our worker and generator images (build.sh) with a
# package of tasks installed, as a team builds theirs (README, "Your own tasks").
#
#   build-tasks.sh [PACKAGE_DIR]    # default examples/csv_summary
#
# Images: <prefix>-<name>-worker:<tag> and <prefix>-<name>-generator:<tag>, where <name> is the
# directory's name with _ as - (csv-summary). Env: as build.sh (see lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$TQ_REPO_ROOT"

package="${1:-examples/csv_summary}"
name="$(basename "$package" | tr '_' '-')"
tag="$TQ_IMAGE_TAG"

secrets_dir="$(mktemp -d "${TMPDIR:-/tmp}/tq-build-secrets.XXXXXX")"
trap 'rm -rf "$secrets_dir"' EXIT
chmod 700 "$secrets_dir"
tq_pip_secrets "$secrets_dir"

for component in worker generator; do
  base="$TQ_IMAGE_PREFIX-$component:$tag" image="$TQ_IMAGE_PREFIX-$name-$component:$tag"
  log="$secrets_dir/build-$component.log"
  tq_log "building $image ($package on $base)"
  if tq_podman build --file examples/Dockerfile --build-arg "BASE_IMAGE=$base" "${TQ_BUILD_OPTS[@]}" \
    --secret "id=pip.conf,src=$secrets_dir/pip.conf" --secret "id=pip-cert,src=$secrets_dir/pip-cert" \
    --tag "$image" "$package" >"$log" 2>&1; then
    tq_log "built $image"
  else
    tail -n 60 "$log" >&2
    tq_log "FAILED to build $image"
    exit 1
  fi
done
