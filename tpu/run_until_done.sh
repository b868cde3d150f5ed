#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Create -> set up -> train, and keep it going through preemptions until
# flaxft writes OUTPUT_DIR/summary.json; then delete the TPU.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOT'
Usage: tpu/run_until_done.sh [--env FILE] [--dry-run] [--SETTING VALUE ...] [key=value ...]

Runs training to the end on spot/preemptible (or any) capacity:
  1. creates the TPU (or queued resource) if it does not exist,
  2. when it is READY: tpu/setup.sh, then tpu/train.sh (detached, --worker=all),
  3. every POLL_SECONDS: checks OUTPUT_DIR/summary.json (written by flaxft at the
     end of a successful run), the TPU state, and that training is still running,
  4. PREEMPTED / TERMINATED / gone (or the queued resource SUSPENDED / FAILED):
     deletes it, re-creates it, sets it up and relaunches; flaxft resumes from
     the latest checkpoint in OUTPUT_DIR. At most MAX_RESTARTS times.
  5. done: prints summary.json and deletes the TPU (DELETE_WHEN_DONE=yes).
If training stops without summary.json (a crash), or MAX_RESTARTS is used up, it
prints the end of the log, deletes the TPU (DELETE_WHEN_DONE=yes) and exits 1.
If the TPU already runs this training, it watches it instead of relaunching.
Use a fresh OUTPUT_DIR for a new run: an existing summary.json means "done".

  key=value    extra flaxft overrides, after TRAIN_OVERRIDES

EOT
  common_usage
}

parse_common_args "$@"
overrides=()
for arg in ${ARGS[@]+"${ARGS[@]}"}; do
  case "$arg" in
    -*) die "unknown option '$arg' (see tpu/run_until_done.sh --help)" ;;
    *=*) overrides+=("$arg") ;;
    *) die "'$arg' is not a key=value override (see tpu/run_until_done.sh --help)" ;;
  esac
done
load_settings
require TPU_NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION
require_setup_settings
require_train_settings
require_gcloud

log() {
  printf '[run_until_done %s] %s\n' "$(date -u +%H:%M:%S)" "$*"
}

if [[ "$DRY_RUN" == 1 ]]; then
  describe_tpu_cmd
  describe_qr_cmd
  echo "# 1. create the TPU (when it does not exist yet)"
  create_tpu
  echo "# 2. when it is READY: set up every worker, then launch training on all of them"
  setup_workers
  launch_training ${overrides[@]+"${overrides[@]}"}
  echo "# 3. every ${POLL_SECONDS}s: finished? TPU state? training still running?"
  run "$GCLOUD" storage ls "$(summary_url)"
  if [[ -n "$QUEUED_RESOURCE" ]]; then run "${DESCRIBE_QR[@]}"; fi
  run "${DESCRIBE_TPU[@]}"
  ssh_cmd all "$(probe_command)"
  run "${SSH_CMD[@]}"
  echo "# 4. preempted or gone (at most $MAX_RESTARTS times): delete, then steps 1-2 again"
  delete_tpu
  echo "# 5. summary.json exists: show it, then delete the TPU (DELETE_WHEN_DONE=$DELETE_WHEN_DONE)"
  run "$GCLOUD" storage cat "$(summary_url)"
  if [[ "$DELETE_WHEN_DONE" == yes ]]; then delete_tpu; fi
  exit 0
fi

on_interrupt() {
  note ""
  note "Interrupted. $TPU_NAME may still exist and bill by the hour: check with tpu/status.sh, remove with tpu/delete.sh"
  exit 130
}
trap on_interrupt INT TERM

summary_exists() {
  capture "$GCLOUD" storage ls "$(summary_url)"
}

# Sets STATE (READY, WAIT, LOST, MISSING or QUERY_FAILED) and RAW (what gcloud said).
resource_state() {
  if [[ -n "$QUEUED_RESOURCE" ]]; then
    qr_state
    RAW=$QR_STATE
    case "$RAW" in
      ACTIVE) ;;
      MISSING | QUERY_FAILED)
        STATE=$RAW
        RAW="queued resource $RAW"
        return
        ;;
      SUSPENDING | SUSPENDED | FAILED)
        STATE=LOST
        RAW="queued resource $RAW"
        return
        ;;
      *)
        STATE=WAIT
        RAW="queued resource $RAW"
        return
        ;;
    esac
  fi
  node_state
  RAW=$NODE_STATE
  case "$RAW" in
    READY) STATE=READY ;;
    QUERY_FAILED) STATE=QUERY_FAILED ;;
    MISSING) if [[ -n "$QUEUED_RESOURCE" ]]; then STATE=LOST; else STATE=MISSING; fi ;;
    PREEMPTED | TERMINATED | STOPPING | STOPPED | HIDING | HIDDEN | UNKNOWN) STATE=LOST ;;
    *) STATE=WAIT ;; # CREATING, STARTING, RESTARTING, REPAIRING, DELETING, ...
  esac
}

# Prints RUNNING (every worker runs flaxft.train), STOPPED (some worker does not), or QUERY_FAILED.
training_status() {
  ssh_cmd all "$(probe_command)"
  capture "${SSH_CMD[@]}" || true
  case "$CAPTURED_OUT" in
    *FLAXFT_STOPPED*) echo STOPPED ;;
    *FLAXFT_RUNNING*) echo RUNNING ;;
    *) echo QUERY_FAILED ;;
  esac
}

cleanup_tpu() {
  resource_state
  if [[ "$STATE" == MISSING ]]; then
    return 0
  fi
  if [[ "$DELETE_WHEN_DONE" == yes ]]; then
    log "deleting $TPU_NAME (DELETE_WHEN_DONE=yes)"
    delete_tpu || note "warning: delete failed; $TPU_NAME may still bill: run tpu/delete.sh"
  else
    log "keeping $TPU_NAME (DELETE_WHEN_DONE=no); it bills until you run tpu/delete.sh"
  fi
}

succeed() {
  log "training finished: $(summary_url)"
  run "$GCLOUD" storage cat "$(summary_url)" || true
  echo
  cleanup_tpu
  log "done; results in $OUTPUT_DIR"
  exit 0
}

give_up() {
  log "giving up: $*"
  if [[ "${STATE:-}" == READY ]]; then
    log "last lines of the training log on every worker:"
    ssh_workers all "tail -n 50 $(quote_word "$REMOTE_DIR/train.log")" || true
  fi
  cleanup_tpu
  log "checkpoints so far are in $OUTPUT_DIR; fix the problem and run tpu/run_until_done.sh again to resume"
  exit 1
}

restarts=0
count_restart() {
  restarts=$((restarts + 1))
  if ((restarts > MAX_RESTARTS)); then
    give_up "$1, and MAX_RESTARTS=$MAX_RESTARTS restarts are used up"
  fi
  log "$1: restart $restarts of at most $MAX_RESTARTS"
}

launched=0       # training was launched (or found running) on the current TPU
touched=0        # this loop has created or launched something (later losses count as restarts)
launch_failures=0
query_failures=0

while :; do
  if summary_exists; then succeed; fi
  resource_state
  if [[ "$STATE" != QUERY_FAILED ]]; then query_failures=0; fi
  case "$STATE" in
    READY)
      if ((launched)); then
        training=$(training_status)
        if [[ "$training" == STOPPED ]]; then
          if summary_exists; then succeed; fi
          give_up "training stopped on a worker without writing $(summary_url)"
        elif [[ "$training" == RUNNING ]]; then
          log "$TPU_NAME READY, training running"
        else
          log "$TPU_NAME READY, could not reach the workers over ssh; will check again"
        fi
      elif ((touched == 0)) && [[ "$(training_status)" == RUNNING ]]; then
        log "$TPU_NAME already runs flaxft.train; watching it"
        launched=1
        touched=1
      else
        log "$TPU_NAME READY: setting up the workers and launching training"
        touched=1
        if setup_workers && launch_training ${overrides[@]+"${overrides[@]}"}; then
          launched=1
          launch_failures=0
        else
          launch_failures=$((launch_failures + 1))
          log "setup or launch failed ($launch_failures of 5 tries; a new TPU can take a few minutes to accept ssh)"
          if ((launch_failures >= 5)); then give_up "setup or launch failed 5 times in a row"; fi
        fi
      fi
      ;;
    WAIT)
      if ((launched)); then
        launched=0
        count_restart "$TPU_NAME is $RAW, its training processes are gone; relaunching when READY"
      else
        log "waiting: $RAW"
      fi
      ;;
    LOST | MISSING)
      if ((touched)); then
        count_restart "$TPU_NAME is $RAW"
      fi
      touched=1
      launched=0
      if [[ "$STATE" == LOST ]]; then
        log "$RAW: deleting it before re-creating"
        delete_tpu || log "delete failed; will retry"
      fi
      log "creating $TPU_NAME"
      create_tpu || log "create failed (no capacity?); will retry"
      ;;
    QUERY_FAILED)
      query_failures=$((query_failures + 1))
      log "could not query the TPU state ($query_failures of 10 tries): ${CAPTURED_ERR:-no output}"
      if ((query_failures >= 10)); then
        note "error: gcloud keeps failing; $TPU_NAME may still exist and bill: check with tpu/status.sh, remove with tpu/delete.sh"
        exit 1
      fi
      ;;
  esac
  sleep "$POLL_SECONDS"
done
