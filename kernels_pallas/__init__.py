"""Pallas kernels for jaxagents (block-sparse attention lands with the MMInference issue)."""
