"""The on-device kernel check runs end to end on CPU (tiny cases, XLA backend), flags a crashing backend as a
failed row without stopping, and exits 1 when a row fails."""

import dataclasses
import json

import pytest

from jaxagents.bench import sparse_kernel_check as check

TINY = tuple(
  dataclasses.replace(case, q_len=case.q_len // 16, kv_len=case.kv_len // 16, heads=case.heads // 4 or 1,
                      kv_heads=max(1, case.kv_heads // 4), block=min(case.block, 64), dtype="float32")
  for case in check.CASES
)


@pytest.mark.slow  # in CI after the suite (.ci/run): keeps the README command under 15 minutes
def test_every_case_passes_on_the_reference_backend():
  rows = check.run(["xla"], tolerance=1e-5, cases=TINY)
  assert [row["case"] for row in rows] == [case.name for case in check.CASES]
  assert all(row["passed"] and row["rel_err"] < 1e-6 and row["deterministic"] for row in rows)


def test_a_crashing_backend_is_a_failed_row_and_the_check_goes_on():
  rows = check.run(["no_such_backend", "xla"], tolerance=1e-5, cases=TINY[:1])
  assert not rows[0]["passed"] and "backend" in rows[0]["error"]
  assert rows[1]["passed"]
  assert "FAILED" in check.format_row(rows[0])


def test_main_writes_json(tmp_path):
  out = tmp_path / "check.json"
  rows = check.main(["--backends", "xla", "--tolerance", "1e-5", "--out", str(out)], cases=TINY[:2])
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows)) and len(rows) == 2
