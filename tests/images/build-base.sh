#!/usr/bin/env bash
# Make the local Python base image the CI builds against: no registry can be reached there, so
# the official python slim image cannot be pulled. A minimal Debian bookworm (debootstrap minbase)
# with Debian's python3 + venv + CA certificates stands in for it.
#
# The root filesystem tarball is cached under $TQ_IMAGES_CACHE and reused while the package list
# and this script's trimming stay the same; only the (fast) `podman import` runs then.
#
# Env: TQ_IMAGES_CACHE, TQ_IMAGES_STORE, TQ_BASE_IMAGE (see lib.sh), DEBIAN_MIRROR (default: the
# bookworm mirror of this machine's apt sources, else deb.debian.org), TQ_BASE_REFRESH=1 to rebuild.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
# Bump when the trimming below changes, so cached tarballs are rebuilt.
RECIPE_VERSION=2

# The first deb URI of this machine's apt sources that serves $SUITE (deb822 and one-line formats).
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v suite="$SUITE" '
      function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") { split(uris, u, " "); print u[1]; found = 1; exit } types = suites = uris = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/  { sub(/^Types:[[:space:]]*/, "");  types = $0 }
      /^URIs:/   { sub(/^URIs:[[:space:]]*/, "");   uris = $0 }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
      END { if (!found) flush() }
    ' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    # deb [options] URI suite components...
    sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
  done
}

mirror="${DEBIAN_MIRROR:-$(apt_mirror | grep -m1 -E '^https?://' || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"

key="$(printf '%s\n' "$SUITE" "$PACKAGES" "$RECIPE_VERSION" | sha256sum | cut -c1-12)"
tarball="$TQ_IMAGES_CACHE/taskqueue-base-$SUITE-$key.tar.gz"
mkdir -p "$TQ_IMAGES_CACHE"

if [[ -s $tarball && ${TQ_BASE_REFRESH:-0} != 1 ]]; then
  tq_log "reusing cached base root filesystem $tarball"
else
  command -v debootstrap >/dev/null || { echo "build-base.sh: debootstrap is not installed" >&2; exit 1; }
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/tq-base-rootfs.XXXXXX")"
  # mktemp makes it 0700, and the tarball's "." becomes the image's "/": non-root users must traverse it.
  chmod 0755 "$rootfs"
  trap 'rm -rf "$rootfs"' EXIT
  tq_log "debootstrap $SUITE from $mirror (packages: $PACKAGES)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2; exit 1
  }
  rm -f "$rootfs.log"
  # Trim what a runtime base does not need (the official slim images drop the same things).
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/tmp/* "$rootfs"/root/.cache
  # The image's own identity, not the host's.
  : >"$rootfs/etc/hostname"
  : >"$rootfs/etc/resolv.conf"
  rm -f "$rootfs/etc/machine-id"
  tmp_tar="$tarball.partial"
  tar --numeric-owner --xattrs -C "$rootfs" -czf "$tmp_tar" .
  mv "$tmp_tar" "$tarball"
  # Tarballs of older recipes are never used again.
  find "$TQ_IMAGES_CACHE" -maxdepth 1 -name "taskqueue-base-$SUITE-*.tar.gz" ! -name "${tarball##*/}" -delete
  rm -rf "$rootfs"
  trap - EXIT
  tq_log "cached $(du -h "$tarball" | cut -f1) at $tarball"
fi

# Import unless this exact tarball is already the image (label carries the cache key).
if [[ "$(tq_podman image inspect --format '{{index .Labels "taskqueue.base.key"}}' "$TQ_BASE_IMAGE" 2>/dev/null)" == "$key" ]]; then
  tq_log "$TQ_BASE_IMAGE is up to date"
else
  tq_log "importing $TQ_BASE_IMAGE"
  tq_podman import \
    --change "LABEL taskqueue.base.key=$key" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --quiet "$tarball" "$TQ_BASE_IMAGE" >/dev/null
fi
tq_log "base image: $(tq_podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$TQ_BASE_IMAGE")"
