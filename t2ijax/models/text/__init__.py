"""Frozen text (and CLIP image) encoders: T5 / mT5 / UMT5, CLIP, Llama.

Load them from Hugging Face folders with `t2ijax.weights.load_text_encoder` / `load_clip`.
Every model has `encode(input_ids, attention_mask) -> (last hidden state, pooled or None)`,
usable as `module.apply(variables, ids, mask, method="encode")`.
"""

from t2ijax.models.text.clip import (CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig)
from t2ijax.models.text.llama import LlamaConfig, LlamaModel
from t2ijax.models.text.t5 import T5Config, T5EncoderModel

__all__ = ["CLIPModel", "CLIPTextConfig", "CLIPTextModel", "CLIPVisionConfig", "LlamaConfig", "LlamaModel",
           "T5Config", "T5EncoderModel"]
