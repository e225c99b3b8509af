"""Tests of the MMInference pattern builders and dispatcher (jaxagents/sparse/), on CPU."""
