#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Show, follow or download the training log of the workers.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOT'
Usage: tpu/logs.sh [--env FILE] [--dry-run] [--worker N|all] [--lines N] [--follow | --download DIR]

Prints the last lines of REMOTE_DIR/train.log on a worker (default: worker 0,
which has the metrics; --worker all shows every worker, one after another).
  --follow        keep streaming new lines (Ctrl-C stops only the viewing)
  --download DIR  copy the worker's train.log into local folder DIR
  --lines N       how many lines (default 100)

EOT
  common_usage
}

parse_common_args "$@"
worker=0
lines=100
follow=0
download=""
set -- ${ARGS[@]+"${ARGS[@]}"}
while (($#)); do
  case "$1" in
    --worker | --lines | --download) (($# >= 2)) || die "$1 needs a value" ;;
  esac
  case "$1" in
    --worker) worker=$2; shift 2 ;;
    --worker=*) worker=${1#*=}; shift ;;
    --lines) lines=$2; shift 2 ;;
    --lines=*) lines=${1#*=}; shift ;;
    --download) download=$2; shift 2 ;;
    --download=*) download=${1#*=}; shift ;;
    --follow) follow=1; shift ;;
    *) die "unexpected argument '$1' (see tpu/logs.sh --help)" ;;
  esac
done
[[ "$worker" == all || "$worker" =~ ^[0-9]+$ ]] || die "--worker must be a worker number or all, not '$worker'"
[[ "$lines" =~ ^[0-9]+$ ]] || die "--lines must be a number, not '$lines'"
load_settings
require TPU_NAME ZONE
require_gcloud

log_path="$REMOTE_DIR/train.log"
if [[ -n "$download" ]]; then
  [[ "$worker" != all ]] || die "--download copies one worker's log; pass --worker N"
  [[ "$DRY_RUN" == 1 ]] || mkdir -p "$download"
  location_flags
  ssh_flags=()
  split_words ssh_flags "$SSH_FLAGS"
  run "$GCLOUD" compute tpus tpu-vm scp "$TPU_NAME:$log_path" "$download/" "${LOCATION[@]}" \
    --worker="$worker" ${ssh_flags[@]+"${ssh_flags[@]}"}
elif ((follow)); then
  ssh_workers "$worker" "tail -n $lines -F $(quote_word "$log_path")"
else
  ssh_workers "$worker" "tail -n $lines $(quote_word "$log_path")"
fi
