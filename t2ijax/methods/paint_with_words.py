"""eDiff-I's paint-with-words (Balaji et al. 2022, section 4.4): place each phrase where the user paints it,
training-free, through the U-Net's cross-attention hook (`t2ijax.models.attention.AttentionEdit`).

For a prompt with painted phrases p (binary masks M_p, strengths s_p), the matrix A (N_image x N_text) holds in
the column of every token of phrase p its mask M_p, bilinearly resized to each cross-attention layer's
resolution, times s_p; other columns are 0. Every cross-attention of the conditional branch computes

    softmax((Q K^T + w A) / sqrt(d)) V,   w = weight(sigma, Q K^T)

and the unconditional (classifier-free-guidance) branch is left unbiased. `PaintSettings`:

  weight  "community" (default) 0.1 w' log(1 + sigma) max(QK^T): the community implementation
                      (cloneofsimo/paint-with-words-sd), the paper's form with its 0.1 coefficient
          "paper"     w' log(1 + sigma) max(QK^T), as the paper writes it
          "std"       0.4 w' log(1 + sigma^2) std(QK^T) (the A1111 variant by CookiePPP)
  before_scale  True (paper, community): w A is added to QK^T before the 1/sqrt(d) scale; False adds it to
                the scaled logits (an unidentified k-diffusion port), a ~sqrt(d) times stronger push.

max / std are taken over each image's scores (all heads, image tokens and text tokens): the community code
samples one image at a time, so its "global" max over the batch is this per-image max; taking it over a batch
would mix in the unconditional branch and the other images. sigma is the noise level of the evaluation: EDM's
sigma, or for a DDPM model the k-diffusion sigma sqrt((1 - alpha_bar_t) / alpha_bar_t) of its timestep (the
community code's LMS sigmas); `PaintSettings.sigma="sd"` takes instead the sigma of Stable Diffusion's
scaled-linear schedule (beta 0.00085-0.012) at the same timestep, which is what the community code computes
whatever the model (DDPM models only). w' is the global `scale` (folded into A, so a sweep does not recompile).

Masks come from arrays or from a colour-coded segmentation image plus a ``{colour: "phrase,strength"}`` map,
as users of the community implementation write it (`Paint.from_segmentation`); a phrase's columns are the
tokens of every occurrence of the phrase in the prompt. With ELLA the cross-attention keys are the connector's
latent queries, not prompt tokens, so a phrase has no columns: ELLA refuses painting.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.models.attention import AttentionEdit

WEIGHTS = ("community", "paper", "std")


SIGMAS = ("model", "sd")


@dataclasses.dataclass(frozen=True)
class PaintSettings:
    weight: str = "community"
    before_scale: bool = True
    sigma: str = "model"

    def __post_init__(self):
        if self.weight not in WEIGHTS:
            raise ValueError(f"paint weight {self.weight!r}; choose one of {WEIGHTS}")
        if self.sigma not in SIGMAS:
            raise ValueError(f"paint sigma {self.sigma!r}; choose one of {SIGMAS}")

    @classmethod
    def from_config(cls, cfg) -> "PaintSettings":
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {}))
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"config.sample.paint has unknown fields {sorted(unknown)}; known: weight, "
                             "before_scale, sigma")
        return cls(**cfg)


@dataclasses.dataclass
class Paint:
    """The painted phrases of one prompt: `masks` (P, H, W) in [0, 1], one per phrase, and their strengths."""

    phrases: Sequence[str]
    masks: np.ndarray
    strengths: Sequence[float] | None = None

    def __post_init__(self):
        self.masks = np.asarray(self.masks, np.float32)
        if self.masks.ndim != 3 or self.masks.shape[0] != len(self.phrases):
            raise ValueError(f"paint: masks must be (phrases, H, W) with {len(self.phrases)} phrases, "
                             f"got {self.masks.shape}")
        if not len(self.phrases):
            raise ValueError("paint: no phrase to paint")
        if self.masks.min(initial=0) < 0 or self.masks.max(initial=0) > 1:
            raise ValueError("paint: mask values must lie in [0, 1]")
        self.strengths = [1.0] * len(self.phrases) if self.strengths is None else [float(s) for s in self.strengths]
        if len(self.strengths) != len(self.phrases):
            raise ValueError(f"paint: {len(self.strengths)} strengths for {len(self.phrases)} phrases")

    @classmethod
    def from_segmentation(cls, image, colour_map: dict, tolerance: int = 8) -> "Paint":
        """A colour-coded segmentation image (H, W, 3) uint8 and ``{colour: "phrase,strength"}`` (colour as
        "#rrggbb", "r,g,b" or an (r, g, b) tuple; strength optional, default 1): one mask per colour, the
        pixels within `tolerance` of it in every channel."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] < 3:
            raise ValueError(f"paint: the segmentation image must be (H, W, 3), got {image.shape}")
        rgb = image[..., :3].astype(np.int32)
        phrases, masks, strengths = [], [], []
        for colour, spec in colour_map.items():
            target = np.asarray(parse_colour(colour), np.int32)
            phrase, strength = parse_phrase(spec)
            mask = np.all(np.abs(rgb - target) <= tolerance, axis=-1)
            if not mask.any():
                raise ValueError(f"paint: colour {colour!r} ({phrase!r}) does not occur in the segmentation image")
            phrases.append(phrase)
            masks.append(mask.astype(np.float32))
            strengths.append(strength)
        return cls(phrases, np.stack(masks), strengths)


def parse_colour(colour) -> tuple[int, int, int]:
    if isinstance(colour, str):
        text = colour.strip()
        if re.fullmatch(r"#?[0-9a-fA-F]{6}", text):
            text = text.lstrip("#")
            return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
        parts = re.split(r"[,\s]+", text.strip("()"))
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
        raise ValueError(f"paint: colour {colour!r} is neither '#rrggbb' nor 'r,g,b'")
    values = tuple(int(c) for c in colour)
    if len(values) != 3:
        raise ValueError(f"paint: colour {colour!r} must have 3 channels")
    return values


def parse_phrase(spec: str) -> tuple[str, float]:
    """"phrase,strength" -> (phrase, strength); a spec without a number after its last comma has strength 1."""
    head, sep, tail = str(spec).rpartition(",")
    if sep:
        try:
            return head.strip(), float(tail)
        except ValueError:
            pass
    return str(spec).strip(), 1.0


def load_paint(mask_path: str, map_spec: str) -> Paint:
    """`t2ijax sample --paint=mask.png --paint_map=map.json` (or an inline JSON object)."""
    from PIL import Image

    text = map_spec.strip()
    if not text.startswith(("{", "[")):
        with open(text) as f:
            text = f.read()
    try:
        colour_map = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--paint_map must be a JSON object {{colour: 'phrase,strength'}}: {e}") from None
    if not isinstance(colour_map, dict) or not colour_map:
        raise ValueError("--paint_map must be a non-empty JSON object {colour: 'phrase,strength'}")
    with Image.open(mask_path) as im:
        image = np.asarray(im.convert("RGB"))
    return Paint.from_segmentation(image, colour_map)


def phrase_spans(prompt: str, phrase: str) -> list[list[int]]:
    """Character spans of every occurrence of `phrase` in `prompt` (case-insensitive, whole words); a
    ValueError when there is none."""
    from t2ijax.data.knowledge import phrase_pattern

    pattern = phrase_pattern(phrase)
    spans = [[m.start(), m.end()] for m in pattern.finditer(prompt)] if pattern is not None else []
    if not spans:
        raise ValueError(f"paint: phrase {phrase!r} does not occur in the prompt {prompt!r}")
    return spans


def check_phrases(paint: Paint, prompts) -> None:
    """Every painted phrase must occur in every prompt (checked before a model is loaded)."""
    for prompt in prompts:
        for phrase in paint.phrases:
            phrase_spans(prompt, phrase)


def phrase_columns(prompt: str, phrase: str, encode) -> np.ndarray:
    """(L,) 0/1: the tokens of every occurrence of `phrase` in `prompt` (`phrase_spans`); `encode` is a
    `t2ijax.data.tokenizer.CaptionTokenizer`."""
    from t2ijax.data.tokenizer import spans_to_token_mask

    spans = phrase_spans(prompt, phrase)
    columns = spans_to_token_mask(encode(prompt, return_offsets=True)["offsets"], spans)
    if not columns.any():
        raise ValueError(f"paint: phrase {phrase!r} lies beyond the {encode.max_length} tokens the prompt is "
                         "truncated to")
    return columns


def paint_matrix(paint: Paint, prompt: str, encode, scale: float = 1.0) -> np.ndarray:
    """(H, W, L) float32: scale * sum_p strength_p * mask_p (x) columns_p: the matrix A before resizing."""
    cols = np.stack([phrase_columns(prompt, p, encode) for p in paint.phrases]).astype(np.float32)
    weighted = paint.masks * np.asarray(paint.strengths, np.float32)[:, None, None]
    return float(scale) * np.einsum("phw,pl->hwl", weighted, cols)


def prompt_matrices(paints, prompts, encode, scale: float = 1.0) -> np.ndarray:
    """(N, H, W, L): one matrix per prompt (zeros where `paints[i]` is None); masks of one size."""
    if len(paints) != len(prompts):
        raise ValueError(f"paint: {len(paints)} paint specs for {len(prompts)} prompts")
    given = [p for p in paints if p is not None]
    if not given:
        raise ValueError("paint: every paint spec is None")
    hw = given[0].masks.shape[1:]
    if any(p.masks.shape[1:] != hw for p in given):
        raise ValueError("paint: every prompt's masks must have the same size")
    out = np.zeros((len(prompts),) + hw + (encode.max_length,), np.float32)
    for i, (p, prompt) in enumerate(zip(paints, prompts)):
        if p is not None:
            out[i] = paint_matrix(p, prompt, encode, scale)
    return out


def layer_grid(query_length: int, model_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the cross-attention layer with `query_length` image tokens in a U-Net whose input is
    `model_hw` (each level halves, rounding up as a stride-2 padded convolution does)."""
    h, w = model_hw
    for _ in range(16):
        if h * w == query_length:
            return h, w
        h, w = -(-h // 2), -(-w // 2)
    raise ValueError(f"paint: {query_length} image tokens match no level of a {model_hw} U-Net input")


def weight(settings: PaintSettings, scores, sigma):
    """(B,) w / w' of each image: from its scores (B, H, Lq, Lk) and sigma (B,)."""
    flat = scores.reshape(scores.shape[0], -1)
    if settings.weight == "std":
        return 0.4 * jnp.log1p(sigma ** 2) * jnp.std(flat, axis=-1)
    coefficient = 0.1 if settings.weight == "community" else 1.0
    return coefficient * jnp.log1p(sigma) * jnp.max(flat, axis=-1)


def bias_fn(matrix, sigma, settings: PaintSettings, model_hw: tuple[int, int]):
    """The cross-attention hook of a painted batch: `matrix` (B, H, W, L) (zeros for the unconditional
    branch), `sigma` (B,) or scalar."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), matrix.shape[:1])

    def fn(query_length, key_length):
        if key_length != matrix.shape[-1]:
            raise ValueError(f"paint: the cross-attention has {key_length} keys but the prompt has "
                             f"{matrix.shape[-1]} token columns")
        h, w = layer_grid(query_length, model_hw)
        resized = jax.image.resize(matrix, (matrix.shape[0], h, w, matrix.shape[-1]), "linear")
        a = resized.reshape(matrix.shape[0], 1, h * w, key_length)

        def score_bias(scores):
            return jax.lax.stop_gradient(weight(settings, scores, sigma))[:, None, None, None] * a

        return AttentionEdit(score_bias=score_bias, score_bias_before_scale=settings.before_scale)

    return fn


def ddpm_sigma(schedule, t, settings: PaintSettings = PaintSettings()):
    """The k-diffusion sigma sqrt((1 - alpha_bar) / alpha_bar) at (possibly fractional) timesteps t, of
    `schedule` or (settings.sigma "sd") of Stable Diffusion's schedule."""
    if settings.sigma == "sd":
        from t2ijax.diffusion import DiscreteSchedule

        schedule = DiscreteSchedule(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear")
    sigmas = jnp.asarray(schedule.sigmas, jnp.float32)
    return jnp.interp(jnp.asarray(t, jnp.float32), jnp.arange(sigmas.shape[0], dtype=jnp.float32), sigmas)
