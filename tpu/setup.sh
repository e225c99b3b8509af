#!/usr/bin/env bash
# Installs jaxagents[tpu] into ~/jaxagents/venv on every worker of a TPU VM, from a git ref or a local wheel.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/setup.sh --name NAME [--zone ZONE] [--project PROJECT]
                    [--ref REF | --wheel FILE.whl] [--repo URL] [--extras tpu]

Copies tpu/worker_setup.sh to every worker and runs it there (`gcloud compute tpus tpu-vm ssh
--worker=all`): it creates the venv ~/jaxagents/venv (Python >= 3.11, via uv) and pip-installs
jaxagents with the given extras, plus gcsfs for gs:// work directories. Safe to run again: it upgrades
the package in the existing venv.

  --ref     git branch, tag or commit to install from --repo (default: main)
  --repo    default https://github.com/jaxagents/jaxagents
  --wheel   a locally built wheel (`pip wheel --no-deps -w dist .`), copied to every worker instead
  --extras  default tpu

Environment: NAME, ZONE, PROJECT as for the flags; PYTHON_VERSION (default 3.12) and EXTRA_PACKAGES are
passed on to worker_setup.sh; DRY_RUN=1 prints the gcloud commands instead of running them.
USAGE
}

REF="${REF:-main}"
REPO="${REPO:-https://github.com/jaxagents/jaxagents}"
WHEEL="${WHEEL:-}"
EXTRAS="${EXTRAS-tpu}"
parse_args name:NAME zone:ZONE project:PROJECT ref:REF repo:REPO wheel:WHEEL extras:EXTRAS -- "$@"
[[ ${#REST[@]} -eq 0 ]] || die "unexpected arguments: ${REST[*]}"
require_name
location_flags

to_copy=("$TPU_DIR/worker_setup.sh")
if [[ -n $WHEEL ]]; then
  [[ -f $WHEEL ]] || die "no such wheel: $WHEEL"
  to_copy+=("$WHEEL")
  source_spec=$(basename "$WHEEL")
else
  source_spec="git+$REPO@$REF"
fi

env_prefix=""
for var in PYTHON_VERSION EXTRA_PACKAGES; do
  if [[ -n ${!var+set} ]]; then env_prefix+="$var=$(printf '%q' "${!var}") "; fi
done

tpu_ssh all "mkdir -p $REMOTE_HOME_DIR/logs"
tpu_scp "${to_copy[@]}"
tpu_ssh all "${env_prefix}bash $REMOTE_HOME_DIR/worker_setup.sh $(printf '%q %q' "$source_spec" "$EXTRAS")"

[[ ${DRY_RUN:-0} == 1 ]] || cat <<NEXT

Installed jaxagents on every worker of $NAME. Next:
  tpu/launch.sh --name $NAME${ZONE:+ --zone $ZONE}${PROJECT:+ --project $PROJECT} \\
    --config configs/quickstart.py --workdir gs://BUCKET/runs/quickstart
NEXT
