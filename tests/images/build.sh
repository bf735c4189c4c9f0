#!/usr/bin/env bash
# Build the generator and worker images from services/Dockerfile with podman (buildah inside),
# against the local base from build-base.sh: chroot isolation, vfs storage, host network.
#
# The pip settings of this machine (index, extra index, trusted hosts, proxy, timeouts and the CA
# bundle, from `pip config list`, which includes PIP_* variables) are read now and passed to the
# build as secrets, so they reach pip in the builder stage and no layer and no file in the repository.
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

# Write a pip.conf with the settings that make sense inside the build (remote URLs only: a
# file:// index or find-links path of this machine does not exist in the container), and copy the
# configured CA bundle. Prints the secret options for podman build.
python3 - "$secrets_dir" <<'PY'
import os
import re
import shutil
import subprocess
import sys

out = sys.argv[1]
try:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, check=True).stdout
except (OSError, subprocess.CalledProcessError):
    listing = ""
settings = {}
# Lines look like  global.index-url='https://…'  or  :env:.index-url='…'; later lines win.
for line in listing.splitlines():
    m = re.match(r"^[^.]*\.([a-z0-9-]+)='(.*)'$", line.strip())
    if m:
        settings[m.group(1)] = m.group(2)
if "timeout" not in settings and "default-timeout" in settings:
    settings["timeout"] = settings["default-timeout"]

remote = lambda value: " ".join(u for u in value.split() if re.match(r"^https?://", u))
conf = {}
for key in ("index-url", "extra-index-url"):
    if key in settings and remote(settings[key]):
        conf[key] = remote(settings[key])
for key in ("trusted-host", "proxy", "timeout", "retries"):
    if settings.get(key):
        conf[key] = settings[key]
with open(os.path.join(out, "pip.conf"), "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
cert = settings.get("cert")
if cert and os.path.isfile(cert):
    shutil.copyfile(cert, os.path.join(out, "pip-cert"))
else:
    open(os.path.join(out, "pip-cert"), "w").close()  # empty: the image's own CA certificates
shown = {k: ("(set)" if k == "proxy" else v) for k, v in conf.items()}
print(f"pip settings for the build: {shown or 'PyPI defaults'}; CA bundle: {cert if cert else 'image default'}",
      file=sys.stderr)
PY

build_opts=(
  --file services/Dockerfile
  --build-arg "BASE_IMAGE=$TQ_BASE_IMAGE"
  --secret "id=pip.conf,src=$secrets_dir/pip.conf"
  --secret "id=pip-cert,src=$secrets_dir/pip-cert"
  # chroot: no nested user/mount namespaces needed; host network: pip reaches the index.
  --isolation chroot --network host
  "${TQ_ULIMITS[@]}"
  # No intermediate layers: with vfs every committed layer is a full copy of the root
  # filesystem (3-5 s each); building the builder stage twice is cheaper (~40 s a target).
  --layers=false
  # Never try a registry: the base is local.
  --pull-never
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
