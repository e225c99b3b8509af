#!/usr/bin/env bash
# Ends the jaxagents.train run that tpu/launch.sh started, on every worker (by the pid in ~/jaxagents/train.pid).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/stop.sh --name NAME [--zone ZONE] [--project PROJECT]

Sends SIGTERM to the run recorded in ~/jaxagents/train.pid on every worker, waits up to 30 s, then
SIGKILLs it. A TPU is held by one process at a time, so stop a run before launching the next.
DRY_RUN=1 prints the gcloud command instead of running it.
USAGE
}

parse_args name:NAME zone:ZONE project:PROJECT -- "$@"
[[ ${#REST[@]} -eq 0 ]] || die "unexpected arguments: ${REST[*]}"
require_name
location_flags

# Runs remotely; single quotes keep $pid and $(...) for the worker's shell.
# shellcheck disable=SC2016
stop_command='pidfile='"$REMOTE_HOME_DIR"'/train.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  pid=$(cat "$pidfile"); kill "$pid"
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  echo "$(hostname): stopped pid $pid"
else
  echo "$(hostname): no run in progress"
fi
rm -f "$pidfile"'
tpu_ssh all "$stop_command"
