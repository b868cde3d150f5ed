# shellcheck shell=bash
# Shared code for the tpu/*.sh scripts: settings, flag parsing, and the gcloud
# commands each step runs. Sourced by the scripts; not meant to be run directly.
#
# Written for bash 3.2+ (the macOS default): no associative arrays, no
# ${var,,}, no mapfile, and empty arrays are expanded as ${a[@]+"${a[@]}"}.

FLAXFT_TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The gcloud executable (an environment variable, so tests can use a fake one).
GCLOUD="${GCLOUD:-gcloud}"
# The Python that lists CONFIG's base: files here (PYTHON is the workers' one).
LOCAL_PYTHON="${LOCAL_PYTHON:-python3}"

# ---------------------------------------------------------------------------
# Settings: NAME|DEFAULT|DESCRIPTION. They come from one env file (tpu/settings.env,
# or --env FILE, or $FLAXFT_TPU_ENV) and from flags (--tpu-name NAME overrides
# TPU_NAME, and so on). Nothing else is read from the environment.
# tpu/settings.env.example documents each one at length.
SETTINGS_SPEC=(
  "TPU_NAME||name of the TPU VM (the node)"
  "ZONE||zone, e.g. us-central2-b (v4) or us-west4-a (v5e)"
  "PROJECT||Google Cloud project (empty: gcloud's configured project)"
  "ACCELERATOR_TYPE||e.g. v4-8, v5litepod-8 (one host) or v4-32 (4 hosts)"
  "RUNTIME_VERSION||TPU software version, e.g. tpu-ubuntu2204-base"
  "CAPACITY|on-demand|on-demand, spot, preemptible or reserved"
  "QUEUED_RESOURCE||if set, create the TPU through a queued resource of this name"
  "QUEUED_VALID_FOR||queued resource only: give up if not provisioned within this duration (e.g. 6h)"
  "CREATE_FLAGS||extra flags for the create command (e.g. --network=NET --service-account=SA)"
  "SSH_FLAGS||extra flags for every ssh/scp command (e.g. --internal-ip)"
  "FLAXFT_SOURCE||what pip installs flaxft from: a pip requirement or git URL, or a local .whl file"
  "JAX_PACKAGE|jax[tpu]|the JAX requirement installed on every worker"
  "EXTRA_PACKAGES|gcsfs|more pip requirements, space-separated (gcsfs: gs:// paths)"
  "PYTHON|python3|Python interpreter on the workers"
  "REMOTE_DIR|flaxft-run|working folder on every worker (relative to the home folder)"
  "DATA_SOURCE||optional gs:// folder copied to REMOTE_DIR/data on every worker by setup"
  "CONFIG||local flaxft config file, copied to every worker (e.g. configs/glue/mrpc.yaml)"
  "OUTPUT_DIR||gs:// folder for checkpoints, logs and the exported model"
  "TRAIN_OVERRIDES||extra key=value overrides for flaxft.train, space-separated"
  "POLL_SECONDS|60|run_until_done: seconds between state checks"
  "MAX_RESTARTS|20|run_until_done: re-creations/relaunches allowed before giving up"
  "DELETE_WHEN_DONE|yes|run_until_done: delete the TPU when training ends (yes or no)"
)

setting_names() {
  local spec
  for spec in "${SETTINGS_SPEC[@]}"; do printf '%s\n' "${spec%%|*}"; done
}

is_setting() {
  local spec
  for spec in "${SETTINGS_SPEC[@]}"; do
    [[ "${spec%%|*}" == "$1" ]] && return 0
  done
  return 1
}

# Flag name for a setting: TPU_NAME -> --tpu-name.
flag_for() {
  printf -- '--%s' "$(printf '%s' "$1" | tr 'A-Z_' 'a-z-')"
}

# ---------------------------------------------------------------------------
# Output helpers.

# A hint for the user (stderr); silent in dry runs, where nothing happened.
hint() {
  [[ "${DRY_RUN:-0}" == 1 ]] || printf '%s\n' "$*" >&2
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

note() {
  printf '%s\n' "$*" >&2
}

# Shell-quote one word only when needed (same safe set as Python's shlex.quote),
# so printed commands can be pasted back into a shell.
quote_word() {
  local w=$1
  if [[ -z "$w" ]]; then
    printf "''"
  elif [[ "$w" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$w"
  else
    local sq="'" q="'\\''"
    printf "'%s'" "${w//$sq/$q}"
  fi
}

# Quote a word for a command line that runs on the workers: double quotes where
# they are enough (jax[tpu] -> "jax[tpu]"), which reads better inside --command '...'.
quote_remote() {
  local w=$1
  if [[ -n "$w" && ! "$w" =~ ^[A-Za-z0-9_@%+=:,./-]+$ && ! "$w" =~ [\"\$\`\\!\'] ]]; then
    printf '"%s"' "$w"
  else
    quote_word "$w"
  fi
}

quote_remote_cmd() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(quote_remote "$w")"
  done
  printf '%s' "$out"
}

quote_cmd() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(quote_word "$w")"
  done
  printf '%s' "$out"
}

# Print a command ("+ cmd"), then run it unless this is a dry run.
run() {
  printf '+ %s\n' "$(quote_cmd "$@")"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    return 0
  fi
  "$@"
}

# ---------------------------------------------------------------------------
# Argument parsing shared by every script.
#   --env FILE        settings file (default: $FLAXFT_TPU_ENV, else tpu/settings.env)
#   --dry-run         print the commands, run nothing
#   -h, --help        the script's usage
#   --<setting> VAL   override a setting (--tpu-name x, --zone=y, ...)
# Everything else is left in ARGS for the script itself.
ARGS=()
FLAG_KEYS=()
FLAG_VALUES=()
DRY_RUN=0
ENV_FILE=""

parse_common_args() {
  ENV_FILE="${FLAXFT_TPU_ENV:-}"
  while (($#)); do
    case "$1" in
      --env)
        (($# >= 2)) || die "--env needs a file name"
        ENV_FILE=$2
        shift 2
        ;;
      --env=*)
        ENV_FILE=${1#*=}
        shift
        ;;
      --dry-run)
        DRY_RUN=1
        shift
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        ARGS+=("$@")
        break
        ;;
      --*)
        local name=${1#--} key value
        name=${name%%=*}
        key=$(printf '%s' "$name" | tr 'a-z-' 'A-Z_')
        if is_setting "$key"; then
          if [[ "$1" == *=* ]]; then
            value=${1#*=}
            shift
          else
            (($# >= 2)) || die "$1 needs a value"
            value=$2
            shift 2
          fi
          FLAG_KEYS+=("$key")
          FLAG_VALUES+=("$value")
        else
          ARGS+=("$1")
          shift
        fi
        ;;
      *)
        ARGS+=("$1")
        shift
        ;;
    esac
  done
}

# Load settings: clear them all, source the env file, apply flags, fill defaults.
load_settings() {
  local name spec i
  while read -r name; do unset "$name"; done < <(setting_names)

  local file=$ENV_FILE
  if [[ -n "$file" ]]; then
    [[ -f "$file" ]] || die "settings file '$file' not found (from --env or FLAXFT_TPU_ENV)"
  elif [[ -f "$FLAXFT_TPU_DIR/settings.env" ]]; then
    file="$FLAXFT_TPU_DIR/settings.env"
  fi
  if [[ -n "$file" ]]; then
    check_env_file "$file"
    # shellcheck disable=SC1090
    source "$file" || die "could not read settings file '$file'"
    SETTINGS_FILE=$file
  else
    SETTINGS_FILE=""
  fi

  for ((i = 0; i < ${#FLAG_KEYS[@]}; i++)); do
    printf -v "${FLAG_KEYS[$i]}" '%s' "${FLAG_VALUES[$i]}"
  done

  for spec in "${SETTINGS_SPEC[@]}"; do
    name=${spec%%|*}
    local rest=${spec#*|}
    local default=${rest%%|*}
    if [[ -z "${!name:-}" ]]; then
      printf -v "$name" '%s' "$default"
    fi
  done
  validate_settings
}

# Refuse settings files with names we do not know (typos would be silently ignored).
check_env_file() {
  local file=$1 line key n=0
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1))
    if [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)= ]]; then
      key=${BASH_REMATCH[2]}
      is_setting "$key" || die "$file:$n: unknown setting '$key' (see tpu/settings.env.example for the list)"
    fi
  done <"$file"
}

validate_settings() {
  case "$CAPACITY" in
    on-demand | spot | preemptible | reserved) ;;
    *) die "CAPACITY must be on-demand, spot, preemptible or reserved, not '$CAPACITY'" ;;
  esac
  if [[ -n "$QUEUED_RESOURCE" && "$CAPACITY" == preemptible ]]; then
    die "CAPACITY=preemptible does not work with QUEUED_RESOURCE; use CAPACITY=spot"
  fi
  if [[ -n "$QUEUED_VALID_FOR" && -z "$QUEUED_RESOURCE" ]]; then
    die "QUEUED_VALID_FOR only applies with QUEUED_RESOURCE set"
  fi
  [[ "$POLL_SECONDS" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "POLL_SECONDS must be a number of seconds, not '$POLL_SECONDS'"
  [[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "MAX_RESTARTS must be a whole number, not '$MAX_RESTARTS'"
  case "$DELETE_WHEN_DONE" in
    yes | no) ;;
    *) die "DELETE_WHEN_DONE must be yes or no, not '$DELETE_WHEN_DONE'" ;;
  esac
  if [[ -n "$TPU_NAME" && ! "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]]; then
    die "TPU_NAME must be lowercase letters, digits and hyphens, starting with a letter, not '$TPU_NAME'"
  fi
  OUTPUT_DIR=${OUTPUT_DIR%/}
  DATA_SOURCE=${DATA_SOURCE%/}
}

# require NAME...: one clear line and exit 2 for the first missing setting.
require() {
  local name where
  if [[ -n "$SETTINGS_FILE" ]]; then where="in $SETTINGS_FILE"; else where="in tpu/settings.env (copy tpu/settings.env.example)"; fi
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      die "$name is not set; set $name=... $where or pass $(flag_for "$name") VALUE"
    fi
  done
}

require_train_settings() {
  require CONFIG OUTPUT_DIR
  [[ "$OUTPUT_DIR" == gs://?* ]] ||
    die "OUTPUT_DIR must be a gs:// folder (every worker writes there and a re-created TPU resumes from it), not '$OUTPUT_DIR'"
  if [[ ! -f "$CONFIG" ]]; then
    if [[ "$DRY_RUN" == 1 ]]; then
      note "warning: CONFIG file '$CONFIG' not found (ignored for --dry-run)"
    else
      die "CONFIG file '$CONFIG' not found (a local flaxft config, e.g. configs/glue/mrpc.yaml)"
    fi
  fi
}

require_setup_settings() {
  require FLAXFT_SOURCE
  if [[ -n "$DATA_SOURCE" && "$DATA_SOURCE" != gs://?* ]]; then
    die "DATA_SOURCE must be a gs:// folder, not '$DATA_SOURCE'; upload local data first: gcloud storage cp -r DIR gs://BUCKET/DIR"
  fi
  if flaxft_is_wheel && [[ ! -f "$FLAXFT_SOURCE" ]]; then
    if [[ "$DRY_RUN" == 1 ]]; then
      note "warning: wheel '$FLAXFT_SOURCE' not found (ignored for --dry-run)"
    else
      die "FLAXFT_SOURCE wheel '$FLAXFT_SOURCE' not found (build one with: python -m pip wheel --no-deps -w dist .)"
    fi
  fi
}

# Fail early (outside dry runs) if gcloud is not there.
require_gcloud() {
  [[ "$DRY_RUN" == 1 ]] && return 0
  command -v "$GCLOUD" >/dev/null 2>&1 ||
    die "gcloud not found (GCLOUD=$GCLOUD); install the Google Cloud CLI or set GCLOUD=/path/to/gcloud"
}

# ---------------------------------------------------------------------------
# gcloud command pieces.

# --zone (and --project) for every TPU command.
location_flags() {
  LOCATION=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then LOCATION+=(--project="$PROJECT"); fi
}

# split_words ARRAY_NAME "a b c": word-split a setting into the (caller's) array.
split_words() {
  read -r -a "$1" <<<"$2"
}

flaxft_is_wheel() {
  [[ "$FLAXFT_SOURCE" == *.whl ]]
}

create_tpu() {
  location_flags
  local extra=()
  split_words extra "$CREATE_FLAGS"
  if [[ -n "$QUEUED_RESOURCE" ]]; then
    local tier=()
    case "$CAPACITY" in
      spot) tier=(--spot) ;;
      reserved) tier=(--reserved) ;;
    esac
    if [[ -n "$QUEUED_VALID_FOR" ]]; then tier+=(--valid-until-duration="$QUEUED_VALID_FOR"); fi
    run "$GCLOUD" compute tpus queued-resources create "$QUEUED_RESOURCE" --node-id="$TPU_NAME" \
      "${LOCATION[@]}" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
      ${tier[@]+"${tier[@]}"} ${extra[@]+"${extra[@]}"}
  else
    local tier=()
    case "$CAPACITY" in
      spot) tier=(--spot) ;;
      preemptible) tier=(--preemptible) ;;
      reserved) tier=(--reserved) ;;
    esac
    run "$GCLOUD" compute tpus tpu-vm create "$TPU_NAME" \
      "${LOCATION[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
      ${tier[@]+"${tier[@]}"} ${extra[@]+"${extra[@]}"}
  fi
}

delete_tpu() {
  location_flags
  if [[ -n "$QUEUED_RESOURCE" ]]; then
    # --force also deletes the TPU VM the queued resource made.
    run "$GCLOUD" compute tpus queued-resources delete "$QUEUED_RESOURCE" "${LOCATION[@]}" --quiet --force
  else
    run "$GCLOUD" compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION[@]}" --quiet
  fi
}

# ssh_cmd WORKER COMMAND: sets SSH_CMD, the ssh that runs COMMAND on one worker or on all.
ssh_cmd() {
  location_flags
  local flags=()
  split_words flags "$SSH_FLAGS"
  SSH_CMD=("$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION[@]}" --worker="$1"
    ${flags[@]+"${flags[@]}"} --command "$2")
}

# ssh_workers WORKER COMMAND: print and run it.
ssh_workers() {
  ssh_cmd "$1" "$2"
  run "${SSH_CMD[@]}"
}

# scp_to_workers SRC DEST: copy a local file to DEST (relative to home) on every worker.
scp_to_workers() {
  location_flags
  local flags=()
  split_words flags "$SSH_FLAGS"
  run "$GCLOUD" compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" "${LOCATION[@]}" --worker=all \
    ${flags[@]+"${flags[@]}"}
}

remote_dir_q() { quote_remote "$REMOTE_DIR"; }

setup_workers() {
  local dir pkgs=() extra=() cmd
  dir=$(remote_dir_q)
  split_words extra "$EXTRA_PACKAGES"
  pkgs=("$JAX_PACKAGE")
  if flaxft_is_wheel; then
    local wheel
    wheel=$(basename "$FLAXFT_SOURCE")
    scp_to_workers "$FLAXFT_SOURCE" "$wheel" || return
    pkgs+=("$wheel")
  else
    pkgs+=("$FLAXFT_SOURCE")
  fi
  pkgs+=(${extra[@]+"${extra[@]}"})
  cmd="set -e; mkdir -p $dir; $PYTHON -m pip install --upgrade pip; $PYTHON -m pip install --upgrade $(quote_remote_cmd "${pkgs[@]}")"
  if [[ -n "$DATA_SOURCE" ]]; then
    cmd+="; gcloud storage rsync --recursive $(quote_remote "$DATA_SOURCE") $dir/data"
  fi
  cmd+="; $PYTHON -c \"import flaxft, jax; print(flaxft.__name__, flaxft.__version__, jax.__name__, jax.__version__)\""
  ssh_workers all "$cmd"
}

# ---------------------------------------------------------------------------
# The config and the files it pulls in through `base:` are copied with their
# folder layout kept. For CONFIG=configs/glue/mrpc.yaml (base: ../base.yaml) the
# workers get REMOTE_DIR/configs/glue/mrpc.yaml and REMOTE_DIR/configs/base.yaml.
# flaxft itself lists those files (`python -m flaxft.config --files CONFIG`), run
# here with LOCAL_PYTHON and this checkout (the folder above tpu/) first on
# PYTHONPATH: it needs only PyYAML, not an installed flaxft.
# Sets CONFIG_FILES (absolute paths), CONFIG_ROOT (their common folder) and
# REMOTE_CONFIG (the --config path on the workers, relative to REMOTE_DIR).
resolve_config_files() {
  CONFIG_FILES=()
  if [[ ! -f "$CONFIG" ]]; then # dry run without the file: just the file itself
    CONFIG_ROOT=$(dirname "$CONFIG")
    REMOTE_CONFIG="$(basename "$CONFIG_ROOT")/$(basename "$CONFIG")"
    return 0
  fi
  command -v "$LOCAL_PYTHON" >/dev/null 2>&1 ||
    die "python not found (LOCAL_PYTHON=$LOCAL_PYTHON); it is needed to list CONFIG's base: files; install Python 3 with PyYAML or set LOCAL_PYTHON=/path/to/python"
  local checkout file dir last
  checkout=$(dirname "$FLAXFT_TPU_DIR")
  if ! capture env PYTHONPATH="$checkout${PYTHONPATH:+:$PYTHONPATH}" "$LOCAL_PYTHON" -m flaxft.config --files "$CONFIG"; then
    last=${CAPTURED_ERR%$'\n'}
    last=${last##*$'\n'}
    [[ "$last" != "flaxft: error: "* ]] ||
      die "CONFIG: ${last#flaxft: error: }"
    die "could not list CONFIG's base: files with $LOCAL_PYTHON -m flaxft.config (${last:-no message}); it needs PyYAML, or set LOCAL_PYTHON to a python that has it"
  fi
  while IFS= read -r file; do
    CONFIG_FILES+=("$file")
  done <<<"$CAPTURED_OUT"
  CONFIG_ROOT=$(dirname "${CONFIG_FILES[0]}")
  for file in "${CONFIG_FILES[@]}"; do
    dir=$(dirname "$file")
    while [[ "$CONFIG_ROOT" != / && "$dir" != "$CONFIG_ROOT" && "$dir" != "$CONFIG_ROOT"/* ]]; do
      CONFIG_ROOT=$(dirname "$CONFIG_ROOT")
    done
  done
  [[ "$CONFIG_ROOT" != / ]] || die "CONFIG: '$CONFIG' and its base: files only share the folder /; keep them under one folder"
  REMOTE_CONFIG="$(basename "$CONFIG_ROOT")/${CONFIG_FILES[0]#"$CONFIG_ROOT"/}"
}

# copy_config: stage the config files under ${TMPDIR:-/tmp}/flaxft-tpu-TPU_NAME and
# copy that folder to REMOTE_DIR on every worker.
copy_config() {
  resolve_config_files
  local stage top file rel
  stage="${TMPDIR:-/tmp}"
  stage="${stage%/}/flaxft-tpu-$TPU_NAME"
  top=$(basename "$CONFIG_ROOT")
  if [[ "$DRY_RUN" != 1 ]]; then
    rm -rf "$stage"
    for file in "${CONFIG_FILES[@]}"; do
      rel=${file#"$CONFIG_ROOT"/}
      mkdir -p "$stage/$top/$(dirname "$rel")"
      cp "$file" "$stage/$top/$rel"
    done
  fi
  location_flags
  local flags=()
  split_words flags "$SSH_FLAGS"
  run "$GCLOUD" compute tpus tpu-vm scp --recurse "$stage/$top" "$TPU_NAME:$REMOTE_DIR/" "${LOCATION[@]}" \
    --worker=all ${flags[@]+"${flags[@]}"}
}

# The flaxft.train command line (run from REMOTE_DIR on the workers).
train_command() {
  local overrides=()
  split_words overrides "$TRAIN_OVERRIDES"
  quote_remote_cmd "$PYTHON" -m flaxft.train --config "$REMOTE_CONFIG" "output_dir=$OUTPUT_DIR" \
    ${overrides[@]+"${overrides[@]}"} "$@"
}

# launch_training [--foreground] [key=value ...]: copy the config, start training on all workers.
launch_training() {
  local foreground=0 dir train cmd
  if [[ "${1:-}" == --foreground ]]; then
    foreground=1
    shift
  fi
  dir=$(remote_dir_q)
  copy_config || return
  train=$(train_command "$@")
  if ((foreground)); then
    cmd="set -o pipefail; cd $dir && $train 2>&1 | tee -a train.log"
  else
    # Detached with nohup: survives the ssh session ending; a pid file guards
    # against a second copy on the same worker.
    cmd="cd $dir && if [ -f train.pid ] && kill -0 \"\$(cat train.pid)\" 2>/dev/null; then"
    cmd+=" echo \"flaxft.train already running on \$(hostname) (pid \$(cat train.pid))\";"
    cmd+=" else echo \"=== launch \$(date -u +%FT%TZ) ===\" >>train.log;"
    cmd+=" nohup $train >>train.log 2>&1 </dev/null & echo \$! >train.pid;"
    cmd+=" echo \"started flaxft.train on \$(hostname), log: $REMOTE_DIR/train.log\"; fi"
  fi
  ssh_workers all "$cmd"
}

stop_training() {
  local dir
  dir=$(remote_dir_q)
  ssh_workers all "cd $dir && if [ -f train.pid ] && kill -0 \"\$(cat train.pid)\" 2>/dev/null; then kill \"\$(cat train.pid)\" && echo \"stopped flaxft.train on \$(hostname)\"; else echo \"flaxft.train not running on \$(hostname)\"; fi"
}

# Probe command: prints FLAXFT_RUNNING or FLAXFT_STOPPED on each worker.
# shellcheck disable=SC2016 # runs on the worker, not here
PROBE_COMMAND_TAIL='[ -f train.pid ] && kill -0 "$(cat train.pid)" 2>/dev/null && echo FLAXFT_RUNNING || echo FLAXFT_STOPPED'
probe_command() {
  printf 'cd %s 2>/dev/null && %s' "$(remote_dir_q)" "$PROBE_COMMAND_TAIL"
}

summary_url() { printf '%s/summary.json' "$OUTPUT_DIR"; }

describe_tpu_cmd() {
  location_flags
  DESCRIBE_TPU=("$GCLOUD" compute tpus tpu-vm describe "$TPU_NAME" "${LOCATION[@]}" '--format=value(state)')
}

describe_qr_cmd() {
  location_flags
  DESCRIBE_QR=("$GCLOUD" compute tpus queued-resources describe "$QUEUED_RESOURCE" "${LOCATION[@]}" '--format=value(state.state)')
}

# capture CMD...: run a query quietly; sets CAPTURED_OUT, CAPTURED_ERR, returns its status.
capture() {
  local errfile rc=0
  errfile=$(mktemp)
  CAPTURED_OUT=$("$@" 2>"$errfile") || rc=$?
  CAPTURED_ERR=$(cat "$errfile")
  rm -f "$errfile"
  return "$rc"
}

is_not_found() {
  [[ "$CAPTURED_ERR" == *NOT_FOUND* || "$CAPTURED_ERR" == *"not found"* || "$CAPTURED_ERR" == *"was not found"* ]]
}

# node_state: sets NODE_STATE to the TPU VM state (READY, PREEMPTED, ...), MISSING,
# or QUERY_FAILED (gcloud failed for another reason; CAPTURED_ERR says why).
node_state() {
  describe_tpu_cmd
  if capture "${DESCRIBE_TPU[@]}"; then
    NODE_STATE=${CAPTURED_OUT%%$'\n'*}
    NODE_STATE=${NODE_STATE:-QUERY_FAILED}
  elif is_not_found; then
    NODE_STATE=MISSING
  else
    NODE_STATE=QUERY_FAILED
  fi
}

# qr_state: sets QR_STATE to the queued resource state (ACTIVE, SUSPENDED, ...), MISSING or QUERY_FAILED.
qr_state() {
  describe_qr_cmd
  if capture "${DESCRIBE_QR[@]}"; then
    QR_STATE=${CAPTURED_OUT%%$'\n'*}
    QR_STATE=${QR_STATE:-QUERY_FAILED}
  elif is_not_found; then
    QR_STATE=MISSING
  else
    QR_STATE=QUERY_FAILED
  fi
}

# ---------------------------------------------------------------------------
# --help text shared by every script.
common_usage() {
  local spec name rest default desc
  cat <<'EOT'
Common options:
  --env FILE     settings file (default: $FLAXFT_TPU_ENV, else tpu/settings.env)
  --dry-run      print the exact commands, run nothing
  -h, --help     this help
Environment:
  GCLOUD         the gcloud executable (default: gcloud)
  LOCAL_PYTHON   the Python (with PyYAML) that reads CONFIG here (default: python3)
Settings (in the env file as NAME=value, or as a flag that overrides the file):
EOT
  for spec in "${SETTINGS_SPEC[@]}"; do
    name=${spec%%|*}
    rest=${spec#*|}
    default=${rest%%|*}
    desc=${rest#*|}
    printf '  %-22s %s%s\n' "$(flag_for "$name")" "$desc" "${default:+ [$default]}"
  done
}
