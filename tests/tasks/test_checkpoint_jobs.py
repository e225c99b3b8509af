"""SFT then GRPO on your own checkpoint and data, as a user runs them: a tiny Qwen2.5-VL in HF format with a tokenizer
made here, a 16-record JSONL with images, `python -m jaxagents.train` with the real-run configs' small variants, a
SIGKILL mid-GRPO that resumes bitwise, and an export that transformers reloads with our fp32 logits."""

import json

import jax
import numpy as np
import pytest

from jaxagents.envs import counting
from jaxagents.envs.counting_export import export_counting
from jaxagents.export import export_run
from jaxagents.models.qwen_vl import QwenVL, load_params
from jaxagents.models.qwen_vl.processor import Processor
from tests.models.qwen_vl import tiny_checkpoint
from tests.models.qwen_vl.test_processor import hf_processor
from tests.tasks.checkpoints import saved_state
from tests.tasks.test_rl_jobs import _run

torch = pytest.importorskip("torch")


@pytest.mark.slow  # five subprocess runs, minutes on 2 cores; CI runs it in its slow stage (`.ci/run`)
def test_sft_then_grpo_on_a_local_checkpoint_resumes_bitwise_and_exports_for_transformers(tmp_path):
  import transformers

  checkpoint = tiny_checkpoint.write_checkpoint(tmp_path / "base", "qwen2_5_vl")
  data = export_counting(counting.CountingConfig(), tmp_path / "data" / "train.jsonl", examples=16, seed=0)
  common = [f"--config.model.checkpoint={checkpoint}", f"--config.data.train={data}"]

  sft = _run("sft_qwen2_5_vl.py:small", tmp_path / "sft", *common)
  assert sft.returncode == 0, sft.stderr[-3000:]
  sft_export = export_run(str(tmp_path / "sft"), str(tmp_path / "sft_export"))
  sft_config, sft_params = load_params(sft_export)
  _, base_params = load_params(checkpoint)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(sft_params), jax.tree.leaves(base_params)))

  grpo = [f"--config.model.checkpoint={sft_export}", f"--config.data.train={data}", "--config.sft.steps=0"]
  straight = _run("grpo_qwen2_5_vl.py:small", tmp_path / "straight", *grpo)
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = _run("grpo_qwen2_5_vl.py:small", tmp_path / "resumed", *grpo, kill_after=2)
  assert killed.returncode == -9, killed.stderr[-3000:]
  resumed = _run("grpo_qwen2_5_vl.py:small", tmp_path / "resumed", *grpo)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from step" in resumed.stderr, resumed.stderr[-3000:]
  step_a, state_a = saved_state(tmp_path / "straight")
  step_b, state_b = saved_state(tmp_path / "resumed")
  assert step_a == step_b == 3
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(a, b)  # bitwise
  logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  rl_steps = [r for r in logged if "reward/mean" in r]
  assert len(rl_steps) == 3 and all(r["rollout/logprob_gap"] < 1e-4 for r in rl_steps)
  assert all(0 <= r["dapo/kept_fraction"] <= 1 for r in rl_steps)

  out = export_run(str(tmp_path / "straight"), str(tmp_path / "export"))
  config, params = load_params(out)
  np.testing.assert_array_equal(jax.tree.leaves(params)[0], jax.tree.leaves(state_a["params"])[0])
  processor = Processor.from_pretrained(out, config=config)
  record = json.loads(data.read_text().splitlines()[0])
  from PIL import Image
  image = np.asarray(Image.open(data.parent / record["images"][0]).convert("RGB"))
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["prompt"]}]}]
  inputs = processor([messages], images=[[image]])
  ours = np.asarray(QwenVL(config).apply({"params": params}, inputs)[0])[0]
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out, attn_implementation="eager")
  hf = hf_processor(out)  # transformers' own processor on the exported files
  text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  batch = hf(text=[text], images=[image], return_tensors="pt")
  np.testing.assert_array_equal(batch["input_ids"].numpy(), inputs.input_ids)
  with torch.no_grad():
    expected = model(**batch).logits[0].numpy()
  error = np.abs(ours - expected).max() / np.ptp(expected)
  assert error < 1e-5, error
