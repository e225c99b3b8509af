"""Metric files: JSONL records survive a resume without double counting; plots are written."""

from jaxagents import metrics as metrics_lib


def test_resumed_run_appends_and_last_record_per_step_wins(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path, tensorboard=False)
  writer.write(1, {"loss": 3.0})
  writer.write(2, {"loss": 2.0})
  writer.close()
  writer = metrics_lib.MetricWriter(tmp_path, tensorboard=False)  # a resumed run repeats step 2
  writer.write(2, {"loss": 1.5})
  writer.write(2, {"eval/loss": 1.7})
  writer.close()
  records = metrics_lib.read_metrics(writer.path)
  assert records == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 1.5, "eval/loss": 1.7}]


def test_tensorboard_events_and_png_are_written(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path, tensorboard=True)
  for step in range(5):
    writer.write(step, {"loss": 1.0 / (step + 1)})
  writer.close()
  assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
  png = tmp_path / "curve.png"
  metrics_lib.plot_curves(metrics_lib.read_metrics(writer.path), ["loss", "missing"], png)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
