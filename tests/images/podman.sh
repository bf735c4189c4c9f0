#!/usr/bin/env bash
# podman on the image tests' own storage (see lib.sh), e.g. `tests/images/podman.sh images`.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
tq_podman "$@"
