#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Show the TPU (and queued resource) state and whether training has finished.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOT'
Usage: tpu/status.sh [--env FILE] [--dry-run] [--SETTING VALUE ...]

Prints the queued resource state (if QUEUED_RESOURCE is set), the TPU VM state
(READY, CREATING, PREEMPTED, ... or MISSING), and, if OUTPUT_DIR is set, whether
OUTPUT_DIR/summary.json exists (flaxft writes it when training has finished).

EOT
  common_usage
}

parse_common_args "$@"
((${#ARGS[@]} == 0)) || die "unexpected argument '${ARGS[0]}' (see tpu/status.sh --help)"
load_settings
require TPU_NAME ZONE
require_gcloud

describe_tpu_cmd
describe_qr_cmd
if [[ "$DRY_RUN" == 1 ]]; then
  if [[ -n "$QUEUED_RESOURCE" ]]; then run "${DESCRIBE_QR[@]}"; fi
  run "${DESCRIBE_TPU[@]}"
  if [[ -n "$OUTPUT_DIR" ]]; then run "$GCLOUD" storage ls "$(summary_url)"; fi
  exit 0
fi
if [[ -n "$QUEUED_RESOURCE" ]]; then
  qr_state
  printf 'queued resource %s: %s\n' "$QUEUED_RESOURCE" "$QR_STATE"
fi
node_state
printf 'tpu %s: %s\n' "$TPU_NAME" "$NODE_STATE"
if [[ -n "$OUTPUT_DIR" ]]; then
  if capture "$GCLOUD" storage ls "$(summary_url)"; then
    printf 'training: finished (%s exists)\n' "$(summary_url)"
  else
    printf 'training: not finished (no %s yet)\n' "$(summary_url)"
  fi
fi
