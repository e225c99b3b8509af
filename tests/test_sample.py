"""`python -m jaxagents.sample`: a question about an image answered from the command line, streamed token by token,
equal to what `generate` decodes on the same checkpoint."""

import numpy as np
import pytest
from PIL import Image

from jaxagents import sample
from jaxagents.generation import SamplingConfig, generate
from jaxagents.models.qwen_vl import QwenVL, load_params
from jaxagents.models.qwen_vl.processor import Processor
from tests.models.qwen_vl import tiny_checkpoint

pytest.importorskip("torch")


def test_sample_prints_the_generated_answer(tmp_path, capsys):
  checkpoint = tiny_checkpoint.write_checkpoint(tmp_path / "ckpt", "qwen2_5_vl")
  image = tmp_path / "x.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 84, 3), np.uint8)).save(image)
  argv = ["--checkpoint", checkpoint, "--image", str(image), "--prompt", "How many red shapes?",
          "--max-new-tokens", "12", "--temperature", "1.0", "--seed", "5"]
  assert sample.main(argv) == 0
  printed = capsys.readouterr().out

  config, params = load_params(checkpoint)
  processor = Processor.from_pretrained(checkpoint, config=config)
  record = sample.conversation(sample.parse_args(argv))
  assert record["messages"][0]["content"][0] == {"type": "image"}
  inputs = processor([record["messages"]], images=[record["images"]])
  import jax
  out = generate(QwenVL(config), {"params": params}, inputs, sampling=SamplingConfig(12, 1.0, **processor.stop_options),
                 key=jax.random.key(5))
  assert printed == processor.decode(out.tokens, out.lengths)[0] + "\n"
  assert len(printed.strip()) > 0


def test_sample_names_a_missing_image(tmp_path):
  checkpoint = tiny_checkpoint.write_checkpoint(tmp_path / "ckpt", "qwen2_5_vl")
  with pytest.raises(FileNotFoundError, match="missing.png"):
    sample.main(["--checkpoint", checkpoint, "--image", str(tmp_path / "missing.png"), "--prompt", "hi"])
