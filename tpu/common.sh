# shellcheck shell=bash
# Sourced by the scripts in tpu/: flag parsing, the gcloud location flags, and DRY_RUN.
# Written for bash 3.2 too (macOS): empty arrays are expanded as ${a[@]+"${a[@]}"} because of `set -u`.
#
# Every script reads NAME, ZONE and PROJECT from the environment; the flags --name/--zone/--project
# override them. ZONE and PROJECT fall back to gcloud's own defaults (`gcloud config set compute/zone ...`).

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_ROOT="$(cd "$TPU_DIR/.." && pwd)"
# What every worker holds, relative to its home directory: venv/, configs/, logs/, the worker_*.sh scripts.
# Kept relative because `gcloud compute tpus tpu-vm scp` resolves remote paths against the remote home.
REMOTE_HOME_DIR="jaxagents"

NAME="${NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"

die() {
  echo "error: $*" >&2
  echo "(run with --help for usage)" >&2
  exit 2
}

# parse_args SPEC... -- ARG...
#   SPEC is `flag:VAR` for a flag that takes a value (`--flag V` or `--flag=V`) or `flag!VAR` for a switch
#   (sets VAR=1). -h/--help calls `usage` and exits. Arguments that match no spec, and everything after a
#   literal `--` among the ARGs, are collected in the array REST in their original order.
parse_args() {
  local -a specs=()
  while [[ $# -gt 0 && $1 != "--" ]]; do
    specs+=("$1")
    shift
  done
  [[ $# -gt 0 ]] && shift
  REST=()
  local arg spec flag var matched
  while [[ $# -gt 0 ]]; do
    arg=$1
    matched=""
    case $arg in
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        REST+=("$@")
        return 0
        ;;
    esac
    for spec in "${specs[@]}"; do
      flag=${spec%%[:!]*}
      var=${spec#*[:!]}
      if [[ $spec == *"!"* ]]; then
        if [[ $arg == "--$flag" ]]; then
          printf -v "$var" '%s' 1
          matched=1
          break
        fi
      elif [[ $arg == "--$flag="* ]]; then
        printf -v "$var" '%s' "${arg#*=}"
        matched=1
        break
      elif [[ $arg == "--$flag" ]]; then
        [[ $# -ge 2 ]] || die "$arg needs a value"
        printf -v "$var" '%s' "$2"
        shift
        matched=1
        break
      fi
    done
    [[ -n $matched ]] || REST+=("$arg")
    shift
  done
}

# Fills the array LOCATION_FLAGS with --zone/--project for the gcloud calls (each only when set).
location_flags() {
  LOCATION_FLAGS=()
  if [[ -n $ZONE ]]; then LOCATION_FLAGS+=("--zone=$ZONE"); fi
  if [[ -n $PROJECT ]]; then LOCATION_FLAGS+=("--project=$PROJECT"); fi
}

require_name() {
  [[ -n $NAME ]] || die "the TPU name is not set: pass --name NAME or export NAME=..."
}

# Runs a command, or with DRY_RUN=1 only prints it (shell-quoted) so that it can be checked or copied.
run() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# tpu_ssh WORKER COMMAND: runs COMMAND (one string, executed by the remote login shell) on WORKER (`all`,
# or an index) of the TPU VM NAME.
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$NAME" ${LOCATION_FLAGS[@]+"${LOCATION_FLAGS[@]}"} --worker="$1" --command="$2"
}

# tpu_scp SOURCE... : copies local files or directories into ~/$REMOTE_HOME_DIR/ on every worker.
tpu_scp() {
  run gcloud compute tpus tpu-vm scp --recurse "$@" "$NAME:$REMOTE_HOME_DIR/" ${LOCATION_FLAGS[@]+"${LOCATION_FLAGS[@]}"} \
    --worker=all
}
