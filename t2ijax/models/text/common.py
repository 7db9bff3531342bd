"""Input validation shared by the text encoders."""

from __future__ import annotations

import jax.numpy as jnp


def check_text_inputs(input_ids, attention_mask):
    """Validate (B, L) integer ids and an optional (B, L) mask; None becomes all ones."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be integers, got {input_ids.dtype}")
    if attention_mask is None:
        return jnp.ones(input_ids.shape, jnp.int32)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from "
                         f"input_ids shape {tuple(input_ids.shape)}")
    return attention_mask


def key_padding_mask(attention_mask):
    """(B, L) 1/0 mask -> (B, 1, 1, L) boolean mask over keys for `attention`."""
    return attention_mask[:, None, None, :].astype(bool)
