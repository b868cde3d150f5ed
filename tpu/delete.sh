#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Delete the TPU VM (or its queued resource, which deletes the VM with it).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOT'
Usage: tpu/delete.sh [--env FILE] [--dry-run] [--SETTING VALUE ...]

Deletes TPU_NAME without asking (gcloud --quiet); with QUEUED_RESOURCE set,
deletes the queued resource with --force, which deletes its TPU too.
Checkpoints and results in OUTPUT_DIR (Cloud Storage) are kept.

EOT
  common_usage
}

parse_common_args "$@"
((${#ARGS[@]} == 0)) || die "unexpected argument '${ARGS[0]}' (see tpu/delete.sh --help)"
load_settings
require TPU_NAME ZONE
require_gcloud

delete_tpu
