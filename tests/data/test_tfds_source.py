"""tfds_source: tensorflow_datasets is optional and imported lazily; never downloads in tests."""

import sys

import pytest

from jaxagents.data import tfds_source


def test_missing_tensorflow_datasets_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes `import tensorflow_datasets` fail
  with pytest.raises(ImportError, match=r"pip install 'jaxagents\[data\]'"):
    tfds_source("mnist", "train")


def test_importing_jaxagents_data_does_not_import_tensorflow_datasets():
  import subprocess

  code = "import sys, jaxagents.data; assert 'tensorflow_datasets' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)


def test_split_must_be_a_single_name():
  with pytest.raises(ValueError, match=r"split: expected one split name such as 'train', got \['train'\]"):
    tfds_source("mnist", ["train"])
