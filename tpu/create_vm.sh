#!/usr/bin/env bash
# Creates a Cloud TPU VM: one host (e.g. v5litepod-8) or a multi-host pod slice (e.g. v5litepod-16).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/create_vm.sh --name NAME [--zone ZONE] [--project PROJECT]
                        [--accelerator-type TYPE] [--version RUNTIME] [GCLOUD_FLAG...]

Creates the TPU VM NAME with `gcloud compute tpus tpu-vm create`. Flags override the environment
variables of the same name (NAME, ZONE, PROJECT, ACCELERATOR_TYPE, VERSION). Any other flag, such as
--spot, --reserved, --network=... or --async, is passed on to gcloud.

  --accelerator-type  default v5litepod-16 (TPU v5e, 16 chips, multi-host). Single host: v5litepod-8,
                      v6e-8, v5p-8, v4-8. Multi-host: v5litepod-16/32/..., v6e-16, v5p-16, v4-32, ...
  --version           TPU runtime (software) version. Default: chosen from the accelerator type,
                      v6e: v2-alpha-tpuv6e, v5p: v2-alpha-tpuv5, v5e: v2-alpha-tpuv5-lite,
                      v4 and older: tpu-ubuntu2204-base.

Environment: DRY_RUN=1 prints the gcloud command instead of running it.

Example:
  NAME=ja-v5e ZONE=us-west4-a PROJECT=my-project tpu/create_vm.sh --accelerator-type v5litepod-16 --spot
USAGE
}

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}"
VERSION="${VERSION:-}"
parse_args name:NAME zone:ZONE project:PROJECT accelerator-type:ACCELERATOR_TYPE version:VERSION -- "$@"
require_name

if [[ -z $VERSION ]]; then
  case $ACCELERATOR_TYPE in
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) die "no default runtime version for accelerator type '$ACCELERATOR_TYPE'; pass --version" ;;
  esac
fi

location_flags
run gcloud compute tpus tpu-vm create "$NAME" ${LOCATION_FLAGS[@]+"${LOCATION_FLAGS[@]}"} \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION" ${REST[@]+"${REST[@]}"}

[[ ${DRY_RUN:-0} == 1 ]] || cat <<NEXT

Created $NAME ($ACCELERATOR_TYPE, runtime $VERSION). Next:
  tpu/setup.sh --name $NAME${ZONE:+ --zone $ZONE}${PROJECT:+ --project $PROJECT}
NEXT
