"""CLIP from scratch: contrastive image-text pretraining of both Flax CLIP towers (Radford et al. 2021).

The trainable params are one `t2ijax.models.text.clip.CLIPModel` (text tower, vision tower, both projections
and ``logit_scale``), randomly initialised. The loss is the symmetric InfoNCE of OpenAI CLIP over the global
batch: the (B, B) cosine-similarity matrix of the L2-normalised projected embeddings, scaled by
``exp(logit_scale)`` (the learnable inverse temperature, clamped at ``model.max_logit_scale`` = 100 as
OpenAI clamps it), cross-entropy image->text over its rows and text->image over its columns, averaged. The
loss works on global arrays inside the jitted step, so with the batch sharded over data / fsdp it is the
one-device value (every image meets every caption of the global batch as a negative; with
``optim.grad_accum_steps > 1`` the negatives are those of one micro-batch). Metrics: ``acc_i2t`` /
``acc_t2i`` (in-batch top-1 retrieval) and ``logit_scale`` (the scale itself, exp of the parameter).

Pixels: the loader's images in [-1, 1] are mapped to [0, 1] and normalised with OpenAI CLIP's mean / std
(`t2ijax.eval.clip_score.CLIP_MEAN` / `CLIP_STD`, the `CLIPImageProcessor` defaults) at their own size:
``vision.image_size`` must equal ``data.resolution`` (32 on Shapes), so that
`t2ijax.eval.clip_score.clip_pixels(images, image_size)` (resize a no-op, centre crop a no-op) is exactly the
training input and `clip_embedders` of an export needs no option. The export also writes a
``preprocessor_config.json`` for `transformers.CLIPImageProcessor` with the same transform.

Tokenizer and pooling: CLIP pools the text at the end-of-text token, and a config whose ``eos_token_id`` is 2
selects Hugging Face's legacy rule (the EOT is the largest id: ``argmax(input_ids)``). The Shapes word
tokenizer's ``[EOS]`` is id 2 (its largest id is a word), so the model's tokenizer (`clip_tokenizer`) is the
data tokenizer with ``[EOS]`` and its last id swapped: then the EOT is both the largest id and not 2, both
pooling rules agree, and `loss` maps the loader's ids onto the model's (`CLIPMethod.id_map`). The export
ships the model's tokenizer; tokenize with it (``load_tokenizer(export/clip)``, or a data-pipeline
``extra_captions`` spec ``"dense:<export>/clip:80"``), not with ``shapes_word``. Tokenizers whose EOS id is
not 2 are used as they are.

Captions: ``data.caption`` (one kind for every example), or, with ``model.caption_mix`` =
{name: weight}, a kind drawn per example from the main caption (its name is ``data.caption``) and the
``data.extra_captions`` names, all tokenized by the data tokenizer at ``data.max_length``.

config.model:
  text               CLIPTextConfig fields; vocab_size 0 = the tokenizer's size, max_position_embeddings
                     0 = data.max_length (eos_token_id comes from the model's tokenizer)
  vision             CLIPVisionConfig fields; image_size 0 = data.resolution
  projection_dim     width of the shared embedding space
  logit_scale_init   initial log inverse temperature (default log(1 / 0.07) = 2.6592)
  max_logit_scale    clamp of exp(logit_scale) in the loss (default 100)
  caption_mix        {} or {caption name: weight} (see above)

Export (``t2ijax convert``): ``<out>/clip`` is a Hugging Face `CLIPModel` folder (config.json,
model.safetensors, the tokenizer, preprocessor_config.json), read by `t2ijax.weights.load_clip`, by
`t2ijax.eval.clip_score.clip_embedders` and by `transformers.CLIPModel.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.methods.common import MethodHooks, as_dict, field

EXPORT_SUBDIR = "clip"
DEFAULT_LOGIT_SCALE_INIT = 2.6592  # log(1 / 0.07), OpenAI CLIP and Hugging Face's default


# ------------------------------------------------------------------------------------------- the loss

def clip_loss(image_embeds, text_embeds, logit_scale, max_logit_scale: float = 100.0):
    """Symmetric InfoNCE of OpenAI CLIP on (B, E) embeddings (pair i = image i, caption i).

    logit_scale: the log inverse temperature (the parameter); the scale is ``min(exp(logit_scale),
    max_logit_scale)`` (no gradient above the clamp). Returns (loss, {"acc_i2t", "acc_t2i", "logit_scale"}),
    all float32 scalars; ``acc_*`` is in-batch top-1 retrieval (argmax, ties to the lower index).
    """
    img = image_embeds.astype(jnp.float32)
    txt = text_embeds.astype(jnp.float32)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    scale = jnp.exp(jnp.minimum(jnp.asarray(logit_scale, jnp.float32), math.log(max_logit_scale)))
    logits = scale * img @ txt.T  # (B images, B captions)
    labels = jnp.arange(logits.shape[0])
    i2t = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1))
    t2i = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0))
    metrics = {"acc_i2t": jnp.mean((jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)),
               "acc_t2i": jnp.mean((jnp.argmax(logits, axis=0) == labels).astype(jnp.float32)),
               "logit_scale": scale}
    return 0.5 * (i2t + t2i), metrics


def normalise_pixels(images):
    """Loader images in [-1, 1] (B, H, W, 3) -> CLIP pixel values: [0, 1], then OpenAI CLIP's mean / std."""
    from t2ijax.eval.clip_score import CLIP_MEAN, CLIP_STD

    x = (images.astype(jnp.float32) + 1.0) * 0.5
    return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


# ------------------------------------------------------------------------------------------- the tokenizer

def clip_tokenizer(tokenizer):
    """(model tokenizer, id_map) for training a CLIP text tower on `tokenizer`'s ids.

    id_map (V,) int32 maps the data tokenizer's ids to the model tokenizer's. When the EOS id is 2 (Hugging
    Face's legacy argmax pooling; the Shapes word tokenizer) the model tokenizer is `tokenizer` with EOS and
    the last id swapped, so that the EOT is the largest id and not 2; otherwise `tokenizer` itself and the
    identity map.
    """
    size = len(tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("CLIP pools the text at the end-of-text token: the tokenizer needs an eos_token")
    id_map = np.arange(size, dtype=np.int32)
    if eos != 2:
        return tokenizer, id_map
    last = size - 1
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    vocab = spec.get("model", {}).get("vocab")
    post = spec.get("post_processor") or {}
    if not isinstance(vocab, dict) or post.get("type") != "TemplateProcessing":
        raise ValueError("the tokenizer's EOS id is 2, which makes CLIP pool with Hugging Face's legacy argmax "
                         "rule; t2ijax can swap the ids only in a fast word-level / BPE tokenizer with a "
                         "TemplateProcessing post-processor: give a tokenizer whose EOS id is not 2")
    swap = {eos: last, last: eos}
    spec["model"]["vocab"] = {tok: swap.get(i, i) for tok, i in vocab.items()}
    for added in spec.get("added_tokens", []):
        added["id"] = swap.get(added["id"], added["id"])
    for special in post.get("special_tokens", {}).values():
        special["ids"] = [swap.get(i, i) for i in special["ids"]]
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    model_tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), model_max_length=tokenizer.model_max_length,
        **{k: getattr(tokenizer, k) for k in ("pad_token", "bos_token", "eos_token", "unk_token")
           if getattr(tokenizer, k, None) is not None})
    if model_tok.eos_token_id != last or len(model_tok) != size:
        raise ValueError(f"swapping the tokenizer's EOS to id {last} failed (EOS is {model_tok.eos_token_id})")
    id_map[eos], id_map[last] = last, eos
    return model_tok, id_map


# ------------------------------------------------------------------------------------------- the method

def _config_fields(cls, values: dict, where: str) -> dict:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config.{where} has fields {unknown} that {cls.__name__} lacks ({sorted(known)})")
    return values


def _towers(model, input_ids, attention_mask, pixel_values):
    """(text embeds, image embeds, logit_scale param) in one apply."""
    return model.get_text_features(input_ids, attention_mask), model.get_image_features(pixel_values), \
        model.logit_scale


class CLIPMethod(MethodHooks):
    """Method interface (t2ijax.train.method); trainable params: the CLIPModel's ``variables["params"]``."""

    def __init__(self, config):
        from t2ijax.data.tokenizer import load_tokenizer
        from t2ijax.models.text.clip import CLIPModel, CLIPTextConfig, CLIPVisionConfig

        m, data = config.model, config.data
        self.dtype = jnp.dtype(config.compute_dtype)
        self.max_length = int(data.max_length)
        self.resolution = int(data.resolution)
        self.data_tokenizer = load_tokenizer(data.tokenizer, self.max_length)
        self.tokenizer, self.id_map = clip_tokenizer(self.data_tokenizer)

        text = _config_fields(CLIPTextConfig, as_dict(m.text), "model.text")
        text["vocab_size"] = int(text.get("vocab_size", 0)) or len(self.tokenizer)
        if text["vocab_size"] < len(self.tokenizer):
            raise ValueError(f"model.text.vocab_size={text['vocab_size']} < the tokenizer's {len(self.tokenizer)}")
        text["max_position_embeddings"] = int(text.get("max_position_embeddings", 0)) or self.max_length
        if text["max_position_embeddings"] < self.max_length:
            raise ValueError(f"model.text.max_position_embeddings={text['max_position_embeddings']} < "
                             f"data.max_length={self.max_length}")
        if "eos_token_id" in text and int(text["eos_token_id"]) != self.tokenizer.eos_token_id:
            raise ValueError(f"model.text.eos_token_id={text['eos_token_id']} is not the model tokenizer's EOS "
                             f"{self.tokenizer.eos_token_id}; leave it out")
        text["eos_token_id"] = int(self.tokenizer.eos_token_id)
        self.projection_dim = int(field(m, "projection_dim", 0))
        if self.projection_dim <= 0:
            raise ValueError(f"model.projection_dim must be positive, got {field(m, 'projection_dim')}")
        text["projection_dim"] = self.projection_dim

        vision = _config_fields(CLIPVisionConfig, as_dict(m.vision), "model.vision")
        vision["image_size"] = int(vision.get("image_size", 0)) or self.resolution
        if vision["image_size"] != self.resolution:
            raise ValueError(f"model.vision.image_size={vision['image_size']} must equal data.resolution="
                             f"{self.resolution}: the vision tower takes the loader's images at their own size")
        if int(vision.get("num_channels", 3)) != 3:
            raise ValueError("model.vision.num_channels must be 3 (RGB)")

        self.max_logit_scale = float(field(m, "max_logit_scale", 100.0))
        if self.max_logit_scale <= 1.0:
            raise ValueError(f"model.max_logit_scale must be > 1, got {self.max_logit_scale}")
        logit_scale_init = float(field(m, "logit_scale_init", DEFAULT_LOGIT_SCALE_INIT))
        self.model = CLIPModel(CLIPTextConfig(**text), CLIPVisionConfig(**vision), projection_dim=self.projection_dim,
                               logit_scale_init_value=logit_scale_init, dtype=self.dtype)
        self.caption_names, self.caption_weights = self._caption_mix(config)
        if int(config.optim.get("grad_accum_steps", 1)) > 1:
            warnings.warn("clip with optim.grad_accum_steps > 1: the contrastive negatives are those of one "
                          "micro-batch (config.batch_size), not of the accumulated batch", stacklevel=2)

    @staticmethod
    def _caption_mix(config) -> tuple[list[str], np.ndarray | None]:
        """([batch field prefix per caption], weights) of ``model.caption_mix``; ([""], None) without one."""
        mix = as_dict(field(config.model, "caption_mix", {}))
        if not mix:
            return [""], None
        main = str(config.data.caption)
        extras = {}
        if dict(config.data.get("extra_captions", {}) or {}):
            from t2ijax.data.pipeline import extra_captions

            extras = extra_captions(config.data)
        names, weights = [], []
        for name, weight in mix.items():
            if name != main and name not in extras:
                raise ValueError(f"model.caption_mix names {name!r}: not data.caption ({main!r}) nor a "
                                 f"data.extra_captions name ({sorted(extras)})")
            if name in extras:
                _, tok, length = extras[name]
                if tok != config.data.tokenizer or length != int(config.data.max_length):
                    raise ValueError(f"data.extra_captions[{name!r}] must use data.tokenizer and data.max_length "
                                     "to be mixed with the main caption")
            if float(weight) < 0:
                raise ValueError(f"model.caption_mix[{name!r}] = {weight} is negative")
            names.append("" if name == main and name not in extras else f"{name}_")
            weights.append(float(weight))
        total = sum(weights)
        if total <= 0:
            raise ValueError("model.caption_mix weights sum to 0")
        return names, np.asarray(weights, np.float32) / total

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        ids = jnp.zeros((1, self.max_length), jnp.int32)
        pixels = jnp.zeros((1, self.resolution, self.resolution, 3), jnp.float32)
        return self.model.init(rng, ids, jnp.ones_like(ids), pixels)["params"]

    def captions(self, batch, rng):
        """(input_ids, attention_mask) of each example (its drawn caption kind), in the model tokenizer's ids."""
        ids = batch[f"{self.caption_names[0]}input_ids"]
        mask = batch[f"{self.caption_names[0]}attention_mask"]
        if self.caption_weights is not None and len(self.caption_names) > 1:
            pick = jax.random.choice(rng, len(self.caption_names), (ids.shape[0],), p=jnp.asarray(self.caption_weights))
            for k, name in enumerate(self.caption_names[1:], start=1):
                chosen = (pick == k)[:, None]
                ids = jnp.where(chosen, batch[f"{name}input_ids"], ids)
                mask = jnp.where(chosen, batch[f"{name}attention_mask"], mask)
        return jnp.asarray(self.id_map)[ids], mask

    def embed(self, params, input_ids, attention_mask, images):
        """(text embeds, image embeds, logit_scale) of model-tokenizer ids and loader images in [-1, 1]."""
        return self.model.apply({"params": params}, input_ids, attention_mask, normalise_pixels(images),
                                method=_towers)

    def loss(self, params, frozen, batch, rng):
        ids, mask = self.captions(batch, rng)
        text, image, logit_scale = self.embed(params, ids, mask, batch["image"])
        return clip_loss(image, text, logit_scale, self.max_logit_scale)

    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """``<out_dir>/clip``: the Hugging Face CLIPModel folder, its tokenizer and image-processor config."""
        from t2ijax.weights import save_text_encoder

        host = jax.tree.map(np.asarray, jax.device_get(params))
        folder = os.path.join(out_dir, EXPORT_SUBDIR)
        save_text_encoder(self.model, host, folder)
        self._set_special_token_ids(folder)
        self.tokenizer.save_pretrained(folder)
        write_image_processor_config(folder, self.model.vision_config.image_size)
        return [folder]

    def _set_special_token_ids(self, folder: str) -> None:
        """The text config's bos / pad ids are those of this tokenizer (`hf_config` writes OpenAI CLIP's)."""
        from t2ijax.weights.torch_layout import read_config, write_config

        cfg = read_config(folder)
        for name in ("bos_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if value is not None:
                cfg["text_config"][name] = int(value)
        write_config(cfg, folder)


def write_image_processor_config(folder: str, image_size: int) -> str:
    """``preprocessor_config.json`` of a `transformers.CLIPImageProcessor` doing `clip_pixels`' transform:
    bicubic resize of the shorter side to `image_size`, centre crop, [0, 1], OpenAI CLIP's mean / std."""
    from t2ijax.eval.clip_score import CLIP_MEAN, CLIP_STD

    cfg = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
           "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
           "image_std": list(CLIP_STD), "do_convert_rgb": True}
    path = os.path.join(folder, "preprocessor_config.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def export_folder(path: str) -> str:
    """The CLIPModel folder of `path`: `path` itself, or its ``clip/`` subfolder (a `t2ijax convert` export)."""
    path = os.fspath(path)
    if not os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, EXPORT_SUBDIR)):
        return os.path.join(path, EXPORT_SUBDIR)
    return path


def make_method(config) -> CLIPMethod:
    return CLIPMethod(config)
