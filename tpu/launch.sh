#!/usr/bin/env bash
# Runs the same `python -m jaxagents.train --config ... --workdir ...` on every worker of a TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/launch.sh --name NAME [--zone ZONE] [--project PROJECT] --workdir DIR
                     [--config configs/FILE.py[:ARG]] [--follow | --foreground] [TRAIN_ARG...]

Copies the local configs/ directory and tpu/worker_train.sh to every worker, then starts on all workers
at once, with JAXAGENTS_DISTRIBUTED=1:
    ~/jaxagents/venv/bin/python -m jaxagents.train --config CONFIG --workdir DIR TRAIN_ARG...
Every other argument (e.g. --config.total_steps=1000 --config.mesh.fsdp=4) is forwarded unchanged.

  --config      a file under the repository's configs/ directory (default configs/quickstart.py), with
                an optional ml_collections `:ARG` suffix; local edits are copied over on every launch
  --workdir     required. On a multi-host slice every worker must see the same directory, so use a
                bucket, gs://BUCKET/runs/NAME (orbax writes checkpoints there directly), or a shared
                filesystem mounted on all workers
  --follow      after starting, stream worker 0's log (Ctrl-C stops the streaming, not the run)
  --foreground  run attached instead of in the background: the output of every worker streams to this
                terminal, and the run ends if the connection drops. For short runs

Runs start in the background, detached from ssh. Each worker logs to ~/jaxagents/logs/worker-<i>.log
and writes its pid to ~/jaxagents/train.pid; tpu/stop.sh ends the run on every worker.
Environment: NAME, ZONE, PROJECT as for the flags; WORKER_ENV="KEY=VALUE ..." sets variables for the
run on the workers (e.g. WORKER_ENV="LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true");
DRY_RUN=1 prints the gcloud commands instead of running them.
USAGE
}

CONFIG="${CONFIG:-configs/quickstart.py}"
WORKDIR="${WORKDIR:-}"
FOLLOW=""
FOREGROUND=""
parse_args name:NAME zone:ZONE project:PROJECT config:CONFIG workdir:WORKDIR 'follow!FOLLOW' \
  'foreground!FOREGROUND' -- "$@"
require_name
[[ -n $WORKDIR ]] || die "--workdir is required (a gs://BUCKET/... path or a directory shared by all workers)"
location_flags

config_file=${CONFIG%%:*}
config_file=${config_file#./}
[[ $config_file == configs/* ]] || die "--config must be a path under configs/ (got '$CONFIG')"
[[ -f "$REPO_ROOT/$config_file" ]] || die "no such config: $REPO_ROOT/$config_file"
if [[ $WORKDIR != gs://* ]]; then
  echo "note: --workdir $WORKDIR is not a gs:// path; on a multi-host slice it must be a shared mount." >&2
fi

env_prefix=""
if [[ -n ${WORKER_ENV:-} ]]; then
  read -r -a assignments <<<"$WORKER_ENV"
  for assignment in "${assignments[@]}"; do
    [[ $assignment == [A-Za-z_]*=* ]] || die "WORKER_ENV entries must look like KEY=VALUE, got '$assignment'"
    env_prefix+="$(printf '%q' "$assignment") "
  done
  env_prefix="env $env_prefix"
fi

mode=()
if [[ -n $FOREGROUND ]]; then mode=(--foreground); fi
train_args=(${mode[@]+"${mode[@]}"} --config "$config_file${CONFIG#"${CONFIG%%:*}"}" --workdir "$WORKDIR"
  ${REST[@]+"${REST[@]}"})
quoted_args=$(printf ' %q' "${train_args[@]}")

tpu_ssh all "mkdir -p $REMOTE_HOME_DIR/logs"
tpu_scp "$REPO_ROOT/configs" "$TPU_DIR/worker_train.sh"
tpu_ssh all "${env_prefix}bash $REMOTE_HOME_DIR/worker_train.sh$quoted_args"

if [[ -n $FOLLOW && -z $FOREGROUND ]]; then
  tpu_ssh 0 "tail -n +1 -F $REMOTE_HOME_DIR/logs/worker-0.log"
fi
