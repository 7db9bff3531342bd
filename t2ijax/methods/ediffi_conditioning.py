"""eDiff-I's conditioning for `t2ijax.methods.experts` (``config.model.conditioning = "multi_encoder"``).

Frozen T5 (T5-XXL in the paper) and CLIP text (CLIP L/14) encoders encode the caption; a CLIP image embedding
(CLIP L/14, optional: style) comes with the example; `t2ijax.models.multi_encoder.MultiEncoderConditioning`
projects the three into the U-Net's cross-attention context [CLIP text tokens, T5 tokens, image token, null
token] and a class vector concat(pooled CLIP text, CLIP image) that the U-Net's diffusers class embedding
(``class_embed_type="projection"``) adds to its time embedding. Training drops each embedding independently
(the whole tensor is zeroed before its projection) with its own rate; all dropped = the unconditional model
of classifier-free guidance. At sampling any subset can be given (`prompt_cond`'s `use`, `image_embeds`):
e.g. style from a CLIP image embedding alone.

config.model.multi_encoder:
  t5_path / t5          the frozen T5: a local Hugging Face folder (T5 / T5 v1.1 / Flan-T5 / mT5 / UMT5 encoder,
                        or a folder holding text_encoder/), or T5Config fields of a RANDOM frozen encoder
                        (vocab_size 0 = its tokenizer's size; smoke runs only, with a warning)
  clip_path / clip      the frozen CLIP text tower: a Hugging Face CLIPTextModel / CLIPTextModelWithProjection
                        folder, or a full CLIPModel folder (e.g. an ECLIPSE ``t2ijax convert`` export's clip/: its
                        text tower and text projection), or CLIPTextConfig fields of a random one
                        (vocab_size 0 = the tokenizer's, max_position_embeddings 0 = clip_max_length)
  t5_tokenizer, clip_tokenizer   tokenizer of each encoder. Default: the encoder's folder (which must then hold
                        Hugging Face tokenizer files); for a random encoder, the data tokenizer (data.tokenizer).
  t5_max_length, clip_max_length token lengths (0 = data.max_length); the paper: 77 CLIP tokens, 113 T5 [S]
  image_embed_dim       Di, width of the CLIP image embedding (768 for L/14)
  t5_dropout, clip_text_dropout, clip_image_dropout   training drop rates (paper [S]: 0.25, 0.2, 0.9)
  width                 projected width (0 = the U-Net's cross_attention_dim, which it must equal)
  layer_norm            LayerNorm after each projection (our choice, default False; see the module)
  text_dtype            compute dtype of the frozen encoders (default float32)
  frozen_seed           seed of random frozen encoders
  feature_cache         optional path of this conditioning's text-feature cache of the TRAIN split (record i =
                        row i: T5 states, CLIP states, pooled CLIP text, both masks); ``t2ijax prepare``
                        (`prepare`) builds it when missing; training then reads the features instead of running
                        the encoders (eDiff-I precomputes its embeddings offline). Empty = on the fly.
  feature_cache_dtype   storage dtype of a cache `prepare` builds ("float16" | "float32")
  image_cache           optional `t2ijax.data.clip_features` cache of the TRAIN split (ECLIPSE's CLIP features:
                        its "image_embeds" are the image embeddings, looked up by the batch's "record");
                        `prepare` builds it from `image_clip_path` (a CLIPModel folder) when missing
  image_field           batch field holding (B, Di) image embeddings when there is no image_cache (default
                        "clip_image_embeds"); with neither, training has no image embedding (always dropped)

Token ids. Each encoder reads its own tokenization of the caption from the batch: ``<name>_input_ids`` /
``<name>_attention_mask`` of ``config.data.extra_captions[name]`` (name "t5" / "clip"), which must be
"<data.caption>:<that encoder's tokenizer>:<its max length>" (the data pipeline tokenizes it); when the
encoder's tokenizer and length are the data's own, the main "input_ids" / "attention_mask" serve and no extra
caption is needed (random smoke-test encoders). The constructor checks this and says what to set.
The pooled CLIP text embedding is the final (final_layer_norm) state at the last attended position (the
end-of-text token for CLIP's tokenizer, the same position Hugging Face pools for CLIP tokenizations; also
right for other tokenizers, e.g. shapes_word's [EOS]), through the text projection when the encoder has one
(CLIPTextModelWithProjection / CLIPModel: the CLIP embedding space shared with the image embedding).

Deviation (documented): the projections are one set of parameters, params["conditioning"], shared by every
expert and trained with them (as ERNIE's shared text encoder); in eDiff-I each expert is a whole fine-tuned
denoiser with its own projections. Sequential expert modes and ``experts.train`` subsets therefore still
update the shared projections.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.methods.common import (FrozenModel, WithCachedFeatures, _folder, as_dict, field, frozen_text_encoder,
                                   text_width)
from t2ijax.models.multi_encoder import INPUTS, MultiEncoderConditioning, context_layout

DEFAULT_DROPOUT = {"t5": 0.25, "clip_text": 0.2, "clip_image": 0.9}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json")
CACHE_KIND = "ediffi_text_features"


def encoder_tokenizer(explicit, encoder_path, data_tokenizer, what: str) -> str:
    """The tokenizer of an encoder: `explicit` if set, else the encoder folder (which must hold tokenizer files),
    else (a random encoder) the data tokenizer."""
    if explicit:
        return str(explicit)
    if encoder_path:
        path = os.path.expanduser(str(encoder_path))
        if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
            raise ValueError(f"model.multi_encoder.{what}_path={encoder_path} holds no tokenizer files "
                             f"({' / '.join(TOKENIZER_FILES)}): set model.multi_encoder.{what}_tokenizer to the "
                             "encoder's tokenizer folder")
        return str(encoder_path)
    return str(data_tokenizer)


def _same_tokenizer(a: str, b: str) -> bool:
    """Whether two tokenizer names are the same (folders compared by absolute path)."""
    def norm(name: str) -> str:
        return os.path.abspath(os.path.expanduser(name)) if os.path.sep in name or os.path.exists(name) else name

    return norm(str(a)) == norm(str(b))


def _clip_encoder(path, fields, dtype, *, vocab_size: int, max_length: int):
    """(FrozenModel of the CLIP text tower, whether its pooled output goes through a text projection,
    pooled width)."""
    from t2ijax.models.text.clip import CLIPTextConfig, CLIPTextModel
    from t2ijax.weights import load_text_encoder
    from t2ijax.weights.torch_layout import read_config

    folder = _folder(path, "text_encoder")
    cfg = read_config(folder) if folder else None
    if cfg is not None and cfg.get("model_type") == "clip":  # a full CLIPModel: its text tower + text_projection
        text_cfg = dict(cfg.get("text_config") or {}, projection_dim=cfg.get("projection_dim", 512))
        module = CLIPTextModel(CLIPTextConfig.from_hf(text_cfg), dtype=dtype)

        def example_inputs():
            ids = jnp.zeros((1, max_length), jnp.int32)
            return (ids, jnp.ones_like(ids)), {}

        frozen = FrozenModel("CLIP text encoder", module, folder,
                             lambda p, shardings=None: load_text_encoder(p, dtype=dtype, shardings=shardings)[1],
                             example_inputs)
        projected = True
    else:
        fields = as_dict(fields)
        if cfg is None and fields:
            fields["max_position_embeddings"] = int(fields.get("max_position_embeddings", 0)) or max_length
        frozen = frozen_text_encoder(folder, fields, "clip", dtype, vocab_size=vocab_size, max_length=max_length,
                                     kinds=("clip",), what="CLIP text encoder")
        projected = cfg is not None and "CLIPTextModelWithProjection" in (cfg.get("architectures") or ())
    config = frozen.module.config
    if max_length > config.max_position_embeddings:
        raise ValueError(f"model.multi_encoder.clip_max_length={max_length} exceeds the CLIP text encoder's "
                         f"max_position_embeddings {config.max_position_embeddings}")
    frozen.module = frozen.module.clone(with_projection=projected)
    return frozen, projected, config.projection_dim if projected else config.hidden_size


def last_attended(states, mask):
    """(B, D): the state at the last position whose mask is 1 (position 0 when none is)."""
    positions = jnp.arange(mask.shape[1])[None]
    index = jnp.argmax(jnp.where(mask.astype(bool), positions, -1), axis=1)
    return jnp.take_along_axis(states, index[:, None, None], axis=1)[:, 0]


class MultiEncoderConditioner:
    """The conditioner of `ExpertsMethod` for eDiff-I (see the module docstring): params["conditioning"],
    frozen {"t5", "clip_text"}, cond {"context", "class_labels"}."""

    param_keys = ("conditioning",)

    def __init__(self, method, config):
        from t2ijax.data.tokenizer import load_tokenizer

        self.method = method
        m = as_dict(field(config.model, "multi_encoder", {}))
        data = config.data
        self.data_config = data
        self.dtype = method.dtype
        self.text_dtype = jnp.dtype(m.get("text_dtype") or "float32")
        self.frozen_seed = int(m.get("frozen_seed") or 0)
        self.t5_max_length = int(m.get("t5_max_length") or data.max_length)
        self.clip_max_length = int(m.get("clip_max_length") or data.max_length)
        self.t5_tokenizer_name = encoder_tokenizer(m.get("t5_tokenizer"), m.get("t5_path"), data.tokenizer, "t5")
        self.clip_tokenizer_name = encoder_tokenizer(m.get("clip_tokenizer"), m.get("clip_path"), data.tokenizer,
                                                     "clip")
        self.t5_tokenizer = load_tokenizer(self.t5_tokenizer_name, self.t5_max_length)
        self.clip_tokenizer = load_tokenizer(self.clip_tokenizer_name, self.clip_max_length)

        self._t5 = frozen_text_encoder(m.get("t5_path") or None, m.get("t5"), "t5", self.text_dtype,
                                       vocab_size=len(self.t5_tokenizer), max_length=self.t5_max_length,
                                       kinds=("t5",), what="T5 encoder")
        self._clip, self.clip_projected, self.pooled_dim = _clip_encoder(
            m.get("clip_path") or None, m.get("clip"), self.text_dtype, vocab_size=len(self.clip_tokenizer),
            max_length=self.clip_max_length)
        self.t5_dim = text_width(self._t5.module)
        self.clip_dim = int(self._clip.module.config.hidden_size)
        self.image_dim = int(m.get("image_embed_dim") or 768)

        self.dropout = {}
        for name in INPUTS:
            rate = m.get(f"{name}_dropout")
            rate = float(DEFAULT_DROPOUT[name] if rate is None else rate)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"model.multi_encoder.{name}_dropout must be in [0, 1], got {rate}")
            self.dropout[name] = rate

        unet = method.unet
        cross = unet.cross_attention_dim
        cross = int(cross if isinstance(cross, int) else cross[0])
        self.width = int(m.get("width") or cross)
        self.module = MultiEncoderConditioning(self.width, layer_norm=bool(m.get("layer_norm", False)),
                                               dtype=self.dtype)
        self.class_dim = self.pooled_dim + self.image_dim
        self._check_unet(unet, cross)

        self.t5_prefix = self._token_prefix(data, "t5", self.t5_tokenizer_name, self.t5_max_length)
        self.clip_prefix = self._token_prefix(data, "clip", self.clip_tokenizer_name, self.clip_max_length)
        self.feature_cache = m.get("feature_cache") or ""
        self.feature_cache_dtype = str(m.get("feature_cache_dtype") or "float16")
        self.image_cache = m.get("image_cache") or ""
        self.image_clip_path = m.get("image_clip_path") or ""
        self.image_field = str(m.get("image_field") or "clip_image_embeds")
        self._encode_jit = jax.jit(self.encode)
        self._prompt_jit = jax.jit(self._prompt_pair)

    # ---------------------------------------------------------------- validation

    def _check_unet(self, unet, cross: int) -> None:
        want = (f"model.unet needs class_embed_type='projection' and projection_class_embeddings_input_dim="
                f"{self.class_dim} (pooled CLIP text {self.pooled_dim} + CLIP image {self.image_dim}) and "
                f"cross_attention_dim={self.width} for the multi-encoder conditioning")
        if unet.class_embed_type != "projection" or unet.num_class_embeds is not None:
            raise ValueError(f"{want}; it has class_embed_type={unet.class_embed_type!r}"
                             + (f", num_class_embeds={unet.num_class_embeds}" if unet.num_class_embeds else ""))
        if unet.projection_class_embeddings_input_dim != self.class_dim:
            raise ValueError(f"{want}; it has projection_class_embeddings_input_dim="
                             f"{unet.projection_class_embeddings_input_dim}")
        if cross != self.width:
            raise ValueError(f"{want}; it has cross_attention_dim={cross} (model.multi_encoder.width={self.width})")

    @staticmethod
    def _token_prefix(data, name: str, tokenizer: str, max_length: int) -> str:
        """Prefix of the batch fields holding `name`'s token ids: "<name>_" (data.extra_captions) or "" (the main
        caption tokenization, when it is the encoder's own)."""
        from t2ijax.data.pipeline import extra_captions

        extras = extra_captions(data)
        want = f"{data.caption}:{tokenizer}:{max_length}"
        if name in extras:
            kind, tok, length = extras[name]
            if kind != data.caption or not _same_tokenizer(tok, tokenizer) or length != max_length:
                raise ValueError(f"config.data.extra_captions[{name!r}] is {kind}:{tok}:{length}; the {name} encoder "
                                 f"needs {want!r} (caption kind data.caption, its tokenizer, its max length)")
            return f"{name}_"
        if _same_tokenizer(data.tokenizer, tokenizer) and int(data.max_length) == max_length:
            return ""
        raise ValueError(f"the {name} encoder tokenizes with {tokenizer} to {max_length} tokens, not the data's "
                         f"{data.tokenizer} / {data.max_length}: set config.data.extra_captions[{name!r}] = {want!r}")

    # ---------------------------------------------------------------- shapes

    @property
    def context_length(self) -> int:
        return self.clip_max_length + self.t5_max_length + 2

    @property
    def layout(self) -> dict[str, slice]:
        """Positions of "clip_text", "t5", "clip_image" and "null" in the context."""
        return context_layout(self.clip_max_length, self.t5_max_length)

    def _zeros(self, b: int):
        return (jnp.zeros((b, self.t5_max_length, self.t5_dim), self.dtype),
                jnp.zeros((b, self.clip_max_length, self.clip_dim), self.dtype),
                jnp.zeros((b, self.pooled_dim), jnp.float32), jnp.zeros((b, self.image_dim), jnp.float32))

    # ---------------------------------------------------------------- the conditioner interface

    def init(self, rng) -> dict:
        keep = jnp.ones((1,), bool)
        return {"conditioning": self.module.init(rng, *self._zeros(1), keep, keep, keep)["params"]}

    def frozen(self, config, shard_config=None) -> dict:
        """{"t5", "clip_text"}: the frozen encoders' params (loaded, or random from `frozen_seed`, T5 first)."""
        rng = np.random.default_rng(self.frozen_seed)
        out = {"t5": self._t5.params(rng, shard_config), "clip_text": self._clip.params(rng, shard_config)}
        if ("text_projection" in out["clip_text"]) != self.clip_projected:
            raise ValueError(f"the CLIP text encoder at {self._clip.path} "
                             f"{'lacks' if self.clip_projected else 'has'} a text_projection, unlike its config.json")
        return out

    def example_cond(self, batch: int) -> dict:
        return {"context": jnp.zeros((batch, self.context_length, self.width), self.dtype),
                "class_labels": jnp.zeros((batch, self.class_dim), jnp.float32)}

    def encode(self, frozen, t5_ids, t5_mask, clip_ids, clip_mask):
        """(T5 states (B, Lt, Dt), CLIP states (B, Lc, Dc), pooled CLIP text (B, Dp)) of the frozen encoders."""
        t5 = self._t5.module.apply({"params": frozen["t5"]}, t5_ids, t5_mask)
        clip_module = self._clip.module
        clip = clip_module.apply({"params": frozen["clip_text"]}, clip_ids, clip_mask)
        pooled = last_attended(clip, clip_mask)
        if self.clip_projected:
            pooled = clip_module.apply({"params": frozen["clip_text"]}, pooled,
                                       method=lambda mod, x: mod.text_projection(x))
        return t5, clip, pooled.astype(jnp.float32)

    def drop_flags(self, key, batch_size: int) -> dict:
        """{"t5", "clip_text", "clip_image"} -> (B,) bool KEEP flags, each drawn independently with its rate."""
        keys = jax.random.split(key, len(INPUTS))
        return {name: ~jax.random.bernoulli(k, self.dropout[name], (batch_size,)) for name, k in zip(INPUTS, keys)}

    def condition(self, params, t5, clip, pooled, image, keep: dict) -> dict:
        """{"context", "class_labels"} of the features and keep flags (`MultiEncoderConditioning`)."""
        context, class_vector = self.module.apply(
            {"params": params["conditioning"]}, t5.astype(self.dtype), clip.astype(self.dtype),
            pooled.astype(jnp.float32), image.astype(jnp.float32), keep["t5"], keep["clip_text"], keep["clip_image"])
        return {"context": context, "class_labels": class_vector}

    def batch_features(self, frozen, batch):
        """(t5, clip, pooled, image, has_image) of a training batch: cached features when the batch carries
        them (`wrap_loader`), else the frozen encoders on its token ids; the image embedding from the batch
        (zeros and has_image False when it has none)."""
        b = batch["image"].shape[0]
        if "t5_states" in batch:
            t5, clip, pooled = batch["t5_states"], batch["clip_states"], batch["clip_pooled"]
        else:
            t5, clip, pooled = self.encode(frozen, batch[f"{self.t5_prefix}input_ids"],
                                           batch[f"{self.t5_prefix}attention_mask"],
                                           batch[f"{self.clip_prefix}input_ids"],
                                           batch[f"{self.clip_prefix}attention_mask"])
        if self.image_field in batch:
            image, has_image = batch[self.image_field], jnp.ones((b,), bool)
        else:
            image, has_image = jnp.zeros((b, self.image_dim), jnp.float32), jnp.zeros((b,), bool)
        if image.shape != (b, self.image_dim):
            raise ValueError(f"batch[{self.image_field!r}] has shape {tuple(image.shape)}; expected ({b}, "
                             f"{self.image_dim}) (model.multi_encoder.image_embed_dim)")
        return tuple(jax.lax.stop_gradient(jnp.asarray(x)) for x in (t5, clip, pooled, image)) + (has_image,)

    def train_cond(self, params, frozen, batch, key) -> dict:
        t5, clip, pooled, image, has_image = self.batch_features(frozen, batch)
        keep = self.drop_flags(key, t5.shape[0])
        keep["clip_image"] = keep["clip_image"] & has_image
        return self.condition(params, t5, clip, pooled, image, keep)

    def prompt_cond(self, params, frozen, prompts, *, image_embeds=None, use=INPUTS) -> tuple[dict, dict]:
        """(cond, uncond) for `prompts`. `use`: the embeddings the cond branch is given, any subset of
        ("t5", "clip_text", "clip_image"); the image is given only with `image_embeds` ((N, Di) or (Di,)).
        uncond drops all three (the unconditional model). E.g. style from an image alone:
        ``prompt_cond(p, f, [""] * n, image_embeds=e, use=("clip_image",))``."""
        from t2ijax.data.tokenizer import tokenize

        use = (use,) if isinstance(use, str) else tuple(use)
        unknown = sorted(set(use) - set(INPUTS))
        if unknown:
            raise ValueError(f"use={list(use)} names {unknown}; choose from {list(INPUTS)}")
        prompts = list(prompts)
        n = len(prompts)
        if not n:
            raise ValueError("sample needs at least one prompt (use '' for image-only conditioning)")
        t5_tok = tokenize(self.t5_tokenizer, prompts, self.t5_max_length)
        clip_tok = tokenize(self.clip_tokenizer, prompts, self.clip_max_length)
        if image_embeds is None:
            image = jnp.zeros((n, self.image_dim), jnp.float32)
        else:
            image = jnp.asarray(image_embeds, jnp.float32)
            image = jnp.broadcast_to(image, (n, self.image_dim)) if image.ndim == 1 else image
            if image.shape != (n, self.image_dim):
                raise ValueError(f"image_embeds has shape {tuple(image.shape)}; expected ({n}, {self.image_dim}) "
                                 "or (image_embed_dim,)")
        given = {"t5": "t5" in use, "clip_text": "clip_text" in use,
                 "clip_image": "clip_image" in use and image_embeds is not None}
        return self._prompt_jit(params, frozen, t5_tok["input_ids"], t5_tok["attention_mask"], clip_tok["input_ids"],
                                clip_tok["attention_mask"], image, {k: jnp.full((n,), v) for k, v in given.items()})

    def _prompt_pair(self, params, frozen, t5_ids, t5_mask, clip_ids, clip_mask, image, given):
        t5, clip, pooled = self.encode(frozen, t5_ids, t5_mask, clip_ids, clip_mask)
        cond = self.condition(params, t5, clip, pooled, image, given)
        uncond = self.condition(params, t5, clip, pooled, image, {k: jnp.zeros_like(v) for k, v in given.items()})
        return cond, uncond

    # ---------------------------------------------------------------- precomputed features

    def _open_text_cache(self, path):
        from t2ijax.data.feature_cache import FeatureCache

        cache = FeatureCache(path)
        fields = cache.metadata.get("fields", {})
        want = {"t5_states": [self.t5_max_length, self.t5_dim], "clip_states": [self.clip_max_length, self.clip_dim],
                "clip_pooled": [self.pooled_dim]}
        have = {k: fields.get(k, {}).get("shape") for k in want}
        if cache.metadata.get("kind") != CACHE_KIND or have != want:
            raise ValueError(f"feature cache {path} holds {cache.metadata.get('kind')!r} features {have}; this "
                             f"config needs {CACHE_KIND!r} {want} (t5/clip max lengths, encoder widths): rebuild it")
        return cache

    def _open_image_cache(self, path):
        from t2ijax.data.feature_cache import FeatureCache

        cache = FeatureCache(path)
        meta = cache.metadata
        shape = meta.get("fields", {}).get("image_embeds", {}).get("shape")
        if shape != [self.image_dim]:
            raise ValueError(f"image cache {path} has image_embeds of shape {shape}; model.multi_encoder."
                             f"image_embed_dim is {self.image_dim} (a t2ijax.data.clip_features cache is expected)")
        if meta.get("split", "train") != "train":
            raise ValueError(f"image cache {path} holds the {meta.get('split')!r} split; training needs 'train'")
        return cache

    def prepare(self, config) -> str | None:
        """Build the configured caches that are missing (``t2ijax prepare``): `feature_cache` (the frozen T5 and
        CLIP text encoders once over the train captions, row order) and `image_cache` (from `image_clip_path`,
        `t2ijax.data.clip_features.build_clip_feature_cache`). Returns their paths, or None."""
        from t2ijax.methods.common import training_captions

        built = []
        if self.feature_cache:
            path = os.path.expanduser(self.feature_cache)
            if not os.path.exists(path):
                self.write_text_cache(self.frozen(config), training_captions(self.data_config), path)
            self._open_text_cache(path)
            built.append(path)
        if self.image_cache:
            path = os.path.expanduser(self.image_cache)
            if not os.path.exists(path):
                if not self.image_clip_path:
                    raise FileNotFoundError(f"model.multi_encoder.image_cache {path} does not exist: set "
                                            "model.multi_encoder.image_clip_path (a CLIPModel folder) to build it")
                from t2ijax.data.clip_features import build_clip_feature_cache

                build_clip_feature_cache(self.image_clip_path, self.data_config, "train", path)
            self._open_image_cache(path)
            built.append(path)
        return ", ".join(built) or None

    def write_text_cache(self, frozen, captions, path, *, batch_size: int = 32) -> dict:
        """Encode `captions` (record i = caption i) into the feature cache at `path`; returns its metadata."""
        from t2ijax.data.feature_cache import STORAGE_DTYPES, captions_sha256, write_arrays
        from t2ijax.data.tokenizer import tokenize

        if self.feature_cache_dtype not in STORAGE_DTYPES:
            raise ValueError(f"model.multi_encoder.feature_cache_dtype must be one of {sorted(STORAGE_DTYPES)}")
        store = STORAGE_DTYPES[self.feature_cache_dtype]
        captions = list(captions)

        def records():
            for start in range(0, len(captions), batch_size):
                texts = captions[start:start + batch_size]
                padded = texts + [""] * (batch_size - len(texts))  # one compiled shape
                t5_tok = tokenize(self.t5_tokenizer, padded, self.t5_max_length)
                clip_tok = tokenize(self.clip_tokenizer, padded, self.clip_max_length)
                t5, clip, pooled = (np.asarray(a, np.float32) for a in self._encode_jit(
                    frozen, t5_tok["input_ids"], t5_tok["attention_mask"], clip_tok["input_ids"],
                    clip_tok["attention_mask"]))
                for j in range(len(texts)):
                    yield start + j, {"t5_states": t5[j].astype(store), "clip_states": clip[j].astype(store),
                                      "clip_pooled": pooled[j].astype(store),
                                      "t5_mask": t5_tok["attention_mask"][j].astype(np.uint8),
                                      "clip_mask": clip_tok["attention_mask"][j].astype(np.uint8)}

        meta = {"kind": CACHE_KIND, "split": "train", "caption": str(self.data_config.caption),
                "t5_encoder": self._t5.path or f"random (frozen_seed {self.frozen_seed})",
                "clip_encoder": self._clip.path or f"random (frozen_seed {self.frozen_seed})",
                "t5_tokenizer": self.t5_tokenizer_name, "clip_tokenizer": self.clip_tokenizer_name,
                "t5_max_length": self.t5_max_length, "clip_max_length": self.clip_max_length,
                "dtype": self.feature_cache_dtype, "captions_sha256": captions_sha256(captions)}
        return write_arrays(records(), path, metadata=meta)

    def wrap_loader(self, loader, split: str):
        """The train loader plus the cached features (`feature_cache`: "t5_states", "clip_states", "clip_pooled")
        and image embeddings (`image_cache`: `image_field`) of every batch's records; other splits unchanged."""
        if split != "train" or not (self.feature_cache or self.image_cache):
            return loader
        caches = {}
        for kind, path, opener in (("text", self.feature_cache, self._open_text_cache),
                                   ("image", self.image_cache, self._open_image_cache)):
            if path:
                path = os.path.expanduser(path)
                if not os.path.exists(path):
                    raise FileNotFoundError(f"model.multi_encoder.{'feature' if kind == 'text' else 'image'}_cache "
                                            f"{path} does not exist: run `t2ijax prepare` with this config first")
                caches[kind] = opener(path)
        rows = len(getattr(loader, "source", ()))
        for cache in caches.values():
            if rows and len(cache) != rows:
                raise ValueError(f"cache {cache.path} has {len(cache)} records but the train split has {rows} rows")
        return WithEDiffIFeatures(loader, caches.get("text"), caches.get("image"), self.t5_prefix, self.clip_prefix,
                                  self.image_field)


class WithEDiffIFeatures(WithCachedFeatures):
    """A data loader plus cached eDiff-I features, looked up by each batch's "record" (train row). The text cache's
    stored masks must equal the batch's (same captions, tokenizers and lengths)."""

    what = "cached eDiff-I features"

    def __init__(self, loader, text_cache, image_cache, t5_prefix: str, clip_prefix: str, image_field: str):
        super().__init__(loader, None)
        self.text_cache, self.image_cache = text_cache, image_cache
        self.t5_prefix, self.clip_prefix, self.image_field = t5_prefix, clip_prefix, image_field

    def lookup(self, records) -> dict:
        return {kind: cache.lookup(records) for kind, cache in (("text", self.text_cache), ("image", self.image_cache))
                if cache is not None}

    def add(self, batch: dict, cached: dict) -> dict:
        if "text" in cached:
            text = cached["text"]
            for name, prefix in (("t5", self.t5_prefix), ("clip", self.clip_prefix)):
                if not np.array_equal(text[f"{name}_mask"].astype(np.int32),
                                      np.asarray(batch[f"{prefix}attention_mask"], np.int32)):
                    raise ValueError(f"feature cache {self.text_cache.path} does not match the data's {name} tokens: "
                                     "rebuild it for this dataset, caption kind, tokenizer and max length")
            batch.update(t5_states=text["t5_states"], clip_states=text["clip_states"], clip_pooled=text["clip_pooled"])
        if "image" in cached:
            batch[self.image_field] = cached["image"]["image_embeds"].astype(np.float32)
        return batch
