#!/usr/bin/env bash
# Runs on each TPU worker (tpu/setup.sh copies it there): makes ~/jaxagents/venv and installs jaxagents.
#
# Usage: worker_setup.sh SOURCE [EXTRAS]
#   SOURCE  a pip VCS URL, git+https://github.com/jaxagents/jaxagents@REF, or the path of a wheel
#           (relative paths are taken from ~/jaxagents, where setup.sh copies wheels)
#   EXTRAS  extras of jaxagents to install, comma-separated (default: tpu; "" for none)
# Environment:
#   PYTHON          an interpreter >= 3.11 to build the venv with (default: uv provides Python $PYTHON_VERSION)
#   PYTHON_VERSION  default 3.12
#   UV_VERSION      the uv release installed from PyPI when uv is not on PATH (default 0.13.9)
#   EXTRA_PACKAGES  installed next to jaxagents (default: gcsfs, which etils.epath needs for gs:// workdirs)
set -euo pipefail

source_spec=${1:?"usage: worker_setup.sh SOURCE [EXTRAS]"}
extras=${2-tpu}
home_dir="${JAXAGENTS_HOME:-$HOME/jaxagents}"
venv="$home_dir/venv"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
UV_VERSION="${UV_VERSION:-0.13.9}"
EXTRA_PACKAGES="${EXTRA_PACKAGES-gcsfs}"
mkdir -p "$home_dir/logs"
cd "$home_dir"

suffix=""
if [[ -n $extras ]]; then suffix="[$extras]"; fi
if [[ $source_spec == *.whl ]]; then
  requirement="$(cd "$(dirname "$source_spec")" && pwd)/$(basename "$source_spec")$suffix"
else
  requirement="jaxagents$suffix @ $source_spec"
fi

if [[ -n ${PYTHON:-} ]]; then
  [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
  pip_install=("$venv/bin/python" -m pip install --upgrade)
else
  # TPU VM images ship Python 3.10 and jaxagents needs >= 3.11, so uv supplies the interpreter. uv comes from PyPI,
  # pinned, into ~/.local (no installer script piped from the network into a shell). PIP_BREAK_SYSTEM_PACKAGES lets
  # a --user install through on images whose Python is marked externally managed; older pips ignore it.
  export PATH="$HOME/.local/bin:$PATH"
  if ! command -v uv >/dev/null 2>&1; then
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --quiet "uv==$UV_VERSION"
  fi
  [[ -x "$venv/bin/python" ]] || uv venv --python "$PYTHON_VERSION" "$venv"
  pip_install=(uv pip install --python "$venv/bin/python" --upgrade)
fi

# Word splitting of EXTRA_PACKAGES is intended: it is a list of requirements.
# shellcheck disable=SC2086
"${pip_install[@]}" "$requirement" $EXTRA_PACKAGES
# Importing jax does not start the TPU runtime, so this check does not wait for the other workers.
"$venv/bin/python" -c 'import jax, jaxagents; print(f"{jaxagents.__name__} ready: jax {jax.__version__}")'
