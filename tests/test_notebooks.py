"""The notebooks run top to bottom on CPU, as a reader would run them, with their training runs shortened.

Each notebook has one code cell tagged `parameters` (papermill's convention); the test swaps its source for
short-run values before executing the notebook with nbclient on a `python3` kernel.
"""

import json
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")  # provides the `python3` kernel

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = REPO_ROOT / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 600
# big_vision-style override that keeps the run to a few seconds of training on a 2-core CPU.
SHORT_RUN_ARGS = ["--config.total_steps=20"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read(path: Path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  return notebook


def _parameters_cell(notebook):
  cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
  if len(cells) != 1:
    raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(cells)}")
  return cells[0]


def _stream_text(cell, limit: int = 8000) -> str:
  streams = [output for output in cell.get("outputs", []) if output.output_type == "stream"]
  return "".join(output.text for output in streams)[-limit:]


def _execute(notebook, cwd: Path):
  """Runs every cell; on a failing cell, fails with that cell's output (the training log) as well."""
  client = nbclient.NotebookClient(
    notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
  )
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as error:
    failed = [cell for cell in notebook.cells if cell.cell_type == "code" and _has_error(cell)]
    log = _stream_text(failed[0]) if failed else ""
    pytest.fail(f"{error}\n--- output of the failing cell (last 8000 chars) ---\n{log}", pytrace=False)


def _has_error(cell) -> bool:
  return any(output.output_type == "error" for output in cell.get("outputs", []))


def test_quickstart_notebook_is_committed_without_outputs():
  notebook = _read(QUICKSTART)
  code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code_cells
  for cell in code_cells:
    assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.get('id')} has outputs"
  assert notebook.metadata["kernelspec"]["name"] == "python3"
  assert re.search(r"^EXTRA_ARGS = \[\]", _parameters_cell(notebook).source, flags=re.MULTILINE)


def test_quickstart_notebook_trains_and_writes_metrics_and_loss_plot(tmp_path, monkeypatch):
  notebook = _read(QUICKSTART)
  workdir = tmp_path / "quickstart"
  _parameters_cell(notebook).source = "\n".join(
    [
      'CONFIG = "configs/quickstart.py"',
      f"WORKDIR = {str(workdir)!r}",
      f"EXTRA_ARGS = {SHORT_RUN_ARGS!r}",
    ]
  )
  # The kernel, and the training subprocess it starts, inherit this environment. Drop the eight fake CPU
  # devices that conftest.py asks for: the notebook should run as on a reader's one-device machine.
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("XLA_FLAGS", xla_flags.strip())
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")

  _execute(notebook, cwd=QUICKSTART.parent)

  metrics_path = workdir / "metrics.jsonl"
  assert metrics_path.is_file(), f"the run wrote no {metrics_path.name}; files: {sorted(os.listdir(workdir))}"
  records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
  assert len(records) >= 1
  assert all("step" in record for record in records), records[:3]
  loss_png = workdir / "loss.png"
  assert loss_png.is_file() and loss_png.read_bytes().startswith(PNG_SIGNATURE)
  shown = [output for cell in notebook.cells for output in cell.get("outputs", []) if "data" in output]
  assert any("image/png" in output["data"] for output in shown), "the notebook displayed no image"
