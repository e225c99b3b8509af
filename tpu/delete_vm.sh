#!/usr/bin/env bash
# Deletes a Cloud TPU VM (all its hosts and their disks). Copy what you need out of ~/jaxagents first.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/delete_vm.sh --name NAME [--zone ZONE] [--project PROJECT] [--yes] [GCLOUD_FLAG...]

Deletes the TPU VM NAME with `gcloud compute tpus tpu-vm delete`. Without --yes gcloud asks for
confirmation. Other flags (e.g. --async) are passed on to gcloud. NAME, ZONE and PROJECT may also come
from the environment. DRY_RUN=1 prints the command instead of running it.
USAGE
}

YES=""
parse_args name:NAME zone:ZONE project:PROJECT 'yes!YES' -- "$@"
require_name
location_flags
quiet=()
if [[ -n $YES ]]; then quiet=(--quiet); fi
run gcloud compute tpus tpu-vm delete "$NAME" ${LOCATION_FLAGS[@]+"${LOCATION_FLAGS[@]}"} \
  ${quiet[@]+"${quiet[@]}"} ${REST[@]+"${REST[@]}"}
