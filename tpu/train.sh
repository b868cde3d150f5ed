#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Launch flaxft.train on every worker at once, with the same config.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOT'
Usage: tpu/train.sh [--env FILE] [--dry-run] [--foreground | --stop] [--SETTING VALUE ...] [key=value ...]

Copies CONFIG to REMOTE_DIR on every worker, then runs on all of them (--worker=all):
  python3 -m flaxft.train --config CONFIG output_dir=OUTPUT_DIR TRAIN_OVERRIDES key=value...
Default: detached (nohup, log in REMOTE_DIR/train.log on each worker); returns at
once and keeps running if your connection drops. Follow it with tpu/logs.sh --follow.
If training is already running on a worker, it is not started twice.
Training resumes from the latest checkpoint in OUTPUT_DIR if there is one.

  --foreground   run attached instead, streaming every worker's output here
                 (Ctrl-C or a dropped connection may stop training)
  --stop         stop the training processes on every worker
  key=value      extra flaxft overrides, after TRAIN_OVERRIDES (e.g. train.batch_size=32)

EOT
  common_usage
}

parse_common_args "$@"
foreground=0
stop=0
overrides=()
for arg in ${ARGS[@]+"${ARGS[@]}"}; do
  case "$arg" in
    --foreground) foreground=1 ;;
    --stop) stop=1 ;;
    -*) die "unknown option '$arg' (see tpu/train.sh --help)" ;;
    *=*) overrides+=("$arg") ;;
    *) die "'$arg' is not a key=value override (see tpu/train.sh --help)" ;;
  esac
done
load_settings
require TPU_NAME ZONE
if ((stop)); then
  require_gcloud
  stop_training
  exit 0
fi
require_train_settings
require_gcloud

if ((foreground)); then
  launch_training --foreground ${overrides[@]+"${overrides[@]}"}
else
  launch_training ${overrides[@]+"${overrides[@]}"}
  hint "Training started on every worker. Follow it: tpu/logs.sh --follow. Results: $OUTPUT_DIR"
fi
