#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Create the TPU VM: on-demand, spot, preemptible or reserved, directly or
# through a queued resource (QUEUED_RESOURCE set).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOT'
Usage: tpu/create.sh [--env FILE] [--dry-run] [--SETTING VALUE ...]

Creates TPU_NAME in ZONE with ACCELERATOR_TYPE and RUNTIME_VERSION:
  gcloud compute tpus tpu-vm create            (QUEUED_RESOURCE empty), or
  gcloud compute tpus queued-resources create  (QUEUED_RESOURCE set; returns at
                                                once, the TPU comes when capacity does).
The TPU bills from the moment it exists until tpu/delete.sh removes it.

EOT
  common_usage
}

parse_common_args "$@"
((${#ARGS[@]} == 0)) || die "unexpected argument '${ARGS[0]}' (see tpu/create.sh --help)"
load_settings
require TPU_NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION
require_gcloud

create_tpu
if [[ -n "$QUEUED_RESOURCE" ]]; then
  hint "Requested queued resource $QUEUED_RESOURCE; tpu/status.sh shows when it is ACTIVE. Delete it (tpu/delete.sh) when done: it bills once provisioned."
else
  hint "TPU $TPU_NAME bills until you delete it: tpu/delete.sh. Next: tpu/setup.sh"
fi
