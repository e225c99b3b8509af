"""Data: random-access sources and the resumable, host-sharded grain pipeline that batches them.

dataset = make_pipeline(ArraySource({"x": x, "y": y}), batch_size=32, seed=0)
iterator = iter(dataset)
batch = next(iterator)              # {"x": [32, ...], "y": [32, ...]}
state = iterator.get_state()        # JSON-able; iter(same pipeline).set_state(state) resumes exactly

Vision-language records on disk (JSONL, Parquet, HF `datasets` folders): `vlm_records.open_dataset(path)`, read by
index through `vlm_records.IndexSource`.
"""

from jaxagents.data.pipeline import make_pipeline
from jaxagents.data.sources import ArraySource, FunctionSource
from jaxagents.data.tfds import tfds_source  # tensorflow_datasets itself is imported only when called
from jaxagents.data.vlm_records import IndexSource, open_dataset

__all__ = ["ArraySource", "FunctionSource", "IndexSource", "make_pipeline", "open_dataset", "tfds_source"]
