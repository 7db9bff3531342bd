"""Flax Linen networks. Shared layers live in `layers.py`, the one attention function in `attention.py`."""
