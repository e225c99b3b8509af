"""Data: random-access sources and the resumable, host-sharded grain pipeline that batches them.

dataset = make_pipeline(ArraySource({"x": x, "y": y}), batch_size=32, seed=0)
iterator = iter(dataset)
batch = next(iterator)              # {"x": [32, ...], "y": [32, ...]}
state = iterator.get_state()        # JSON-able; iter(same pipeline).set_state(state) resumes exactly
"""

from jaxagents.data.pipeline import make_pipeline
from jaxagents.data.sources import ArraySource, FunctionSource
from jaxagents.data.tfds import tfds_source  # tensorflow_datasets itself is imported only when called

__all__ = ["ArraySource", "FunctionSource", "make_pipeline", "tfds_source"]
