#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install jax[tpu], flaxft and gcsfs on every worker of the TPU VM.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOT'
Usage: tpu/setup.sh [--env FILE] [--dry-run] [--SETTING VALUE ...]

On every worker at once (--worker=all): creates REMOTE_DIR, pip installs
JAX_PACKAGE, FLAXFT_SOURCE and EXTRA_PACKAGES, copies DATA_SOURCE (if set) to
REMOTE_DIR/data, and imports flaxft and jax to check the install.
FLAXFT_SOURCE is a pip requirement (flaxft==0.1.0, git+https://...) or a local
.whl file, which is first copied to every worker.

EOT
  common_usage
}

parse_common_args "$@"
((${#ARGS[@]} == 0)) || die "unexpected argument '${ARGS[0]}' (see tpu/setup.sh --help)"
load_settings
require TPU_NAME ZONE
require_setup_settings
require_gcloud

setup_workers
hint "Workers set up. Next: tpu/train.sh"
