"""Tests of the Pallas kernels (kernels_pallas/), interpret mode on CPU."""
