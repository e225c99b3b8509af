"""Pallas kernels for jaxagents.

`kernels_pallas.block_sparse`: MMInference's block-sparse flash-attention forward (Pallas GPU via the Triton
lowering, Pallas TPU, and a pure-JAX reference), see its package docstring.
"""
