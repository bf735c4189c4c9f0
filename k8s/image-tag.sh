#!/bin/sh
# The tag of the images one `make kind-up` / `make kind-load` builds, loads into kind and deploys: the
# commit, and for a working tree with changes "-dirty-" and a digest of those changes, so that every
# rebuild of changed code gets a tag of its own and the Deployments roll out to it (a fixed tag with
# imagePullPolicy IfNotPresent would keep the old image). Outside a git checkout: "dev-" and the time.
# POSIX sh and tools of both macOS and Linux.
set -eu
cd "$(dirname "$0")/.."
if ! commit=$(git rev-parse --short=12 HEAD 2>/dev/null); then
  echo "dev-$(date -u +%Y%m%d%H%M%S)"
  exit 0
fi
changes=$(git status --porcelain --untracked-files=all 2>/dev/null)
if [ -z "$changes" ]; then
  echo "$commit"
  exit 0
fi
if command -v sha256sum >/dev/null 2>&1; then sha="sha256sum"; else sha="shasum -a 256"; fi
# What changed: tracked changes against HEAD and the untracked files' names and contents.
digest=$({
  git diff HEAD --binary
  # shellcheck disable=SC2016  # $f is the inner shell's
  git ls-files --others --exclude-standard -z | xargs -0 sh -c 'for f; do printf "%s\n" "$f"; cat "$f"; done' sh
} | $sha | cut -c1-8)
echo "$commit-dirty-$digest"
