"""Triton kernels, one module per op (imported lazily: triton is optional)."""
