#!/usr/bin/env bash
# Runs on each TPU worker (tpu/launch.sh copies it there): starts `python -m jaxagents.train ARGS...` in the
# background with JAXAGENTS_DISTRIBUTED=1, detached from the ssh session, logging to
# ~/jaxagents/logs/worker-<index>.log and recording its pid in ~/jaxagents/train.pid.
#
# Usage: worker_train.sh [--foreground] TRAIN_ARG...
#   --foreground  run attached instead (output to the terminal and the log); ends when training ends
set -euo pipefail

home_dir="${JAXAGENTS_HOME:-$HOME/jaxagents}"
python="$home_dir/venv/bin/python"
foreground=""
if [[ ${1:-} == --foreground ]]; then
  foreground=1
  shift
fi
cd "$home_dir"
mkdir -p logs
[[ -x $python ]] || { echo "error: no venv at $home_dir/venv; run tpu/setup.sh first" >&2; exit 1; }

# The worker index from the metadata server (0 on the host that runs the coordinator); hostname elsewhere.
worker=$(curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number ||
  hostname)
log="$home_dir/logs/worker-$worker.log"

if [[ -f train.pid ]] && kill -0 "$(cat train.pid)" 2>/dev/null; then
  echo "error: worker $worker is still running jaxagents.train (pid $(cat train.pid)); tpu/stop.sh ends it" >&2
  exit 1
fi

# jaxagents.sharding.maybe_initialize_distributed() calls jax.distributed.initialize() when this is set;
# on a TPU VM jax then finds the coordinator, process count and process id in the metadata server.
export JAXAGENTS_DISTRIBUTED=1
if [[ -n $foreground ]]; then
  echo "worker $worker: jaxagents.train $*" | tee "$log"
  "$python" -m jaxagents.train "$@" 2>&1 | tee -a "$log"
else
  echo "worker $worker: jaxagents.train $*" >"$log"
  # setsid + nohup: the run survives the end of the ssh session; `$!` is python's pid since both exec.
  nohup setsid "$python" -m jaxagents.train "$@" >>"$log" 2>&1 </dev/null &
  echo $! >train.pid
  echo "worker $worker: started pid $!, log $log"
fi
