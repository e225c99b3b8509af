"""The TPU scripts parse, and none runs a script fetched from the network (tools come pinned from PyPI)."""

import pathlib
import re
import shutil
import subprocess

import pytest

TPU = pathlib.Path(__file__).resolve().parents[1] / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh"))
# A download piped into a shell: `curl ... | sh`, `wget -qO- ... | sudo bash`, and the like.
_PIPED_INTO_SHELL = re.compile(r"\b(curl|wget)\b[^|\n]*\|\s*(sudo\s+)?(ba|z|da)?sh\b")


def test_there_are_scripts_to_check():
  assert "worker_setup.sh" in [script.name for script in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_no_script_pipes_a_download_into_a_shell(script):
  lines = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
  piped = [line.strip() for line in lines if _PIPED_INTO_SHELL.search(line)]
  assert not piped, f"{script.name} runs a script from the network: {piped}"


def test_the_pattern_catches_the_usual_installer_one_liners():
  for line in ("curl -LsSf https://astral.sh/uv/install.sh | sh", "wget -qO- https://x/i.sh | sudo bash",
               "curl -fsSL https://x/i.sh |bash -s -- --yes"):
    assert _PIPED_INTO_SHELL.search(line), line
  assert not _PIPED_INTO_SHELL.search("curl -sf --max-time 5 -H 'Metadata-Flavor: Google' http://metadata/x")


def test_worker_setup_installs_a_pinned_uv_from_pypi():
  text = (TPU / "worker_setup.sh").read_text()
  assert re.search(r'UV_VERSION="\$\{UV_VERSION:-\d+\.\d+\.\d+\}"', text)
  assert 'python3 -m pip install --user --quiet "uv==$UV_VERSION"' in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_parses(script):
  result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
