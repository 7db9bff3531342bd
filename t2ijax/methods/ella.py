"""ELLA training: only the Timestep-Aware Semantic Connector learns (arXiv 2403.05135, §3 and §5.1).

A frozen LLM encoder (Flan-T5-XL in the paper) encodes the caption, the TSC
(`t2ijax.models.ella.ELLA`) maps its last hidden state and the timestep to the
U-Net's `encoder_hidden_states`, and a frozen U-Net (SD1.5; optionally in the
latent space of a frozen VAE) predicts the noise. Loss: epsilon-prediction MSE
with t ~ U{0..T-1} ("ELLA only used the Diffusion MSE loss", ELLA #36). The
paper's optimiser is AdamW(lr 1e-4 constant, weight decay 0.01): set it in
`config.optim` (the loop owns the optimiser); the IP-Adapter script the
authors point to uses no EMA and no gradient clipping.

Caption dropout replaces a caption's LLM features by those of the EMPTY
prompt, T5(""), with probability `model.caption_dropout` (default 0.1; ELLA's
own rate was never published, IP-Adapter's script uses 0.05). The same empty
prompt is the classifier-free-guidance unconditional input at sampling time.

config.model:
  ella                 ELLA constructor fields (`input_dim` = LLM width, `width` = U-Net
                       cross_attention_dim); empty = the released ELLA-SD1.5 TSC
  unet_path / unet     a diffusers U-Net folder (frozen; or a folder holding unet/), or a U-Net config
                       initialised at random with `frozen_seed` (smoke tests only, with a warning: a random
                       frozen U-Net learns nothing useful)
  vae_path / vae       optional frozen VAE (folder, or one holding vae/; or config): train in its latent space;
                       neither = pixel space (the U-Net's in_channels must be 3)
  text_encoder_path / text   the frozen LLM: a local Hugging Face folder (T5 / Flan-T5 / mT5 /
                       UMT5 encoder, or Llama: TinyLlama, LLaMA-2; `t2ijax.weights.load_text_encoder`),
                       or config fields of a randomly initialised frozen encoder of type
                       `text_encoder_type` ("t5": T5Config, "llama": LlamaConfig; vocab_size 0 =
                       the tokenizer's size). The features are its last hidden state.
  text_dtype           compute dtype of the frozen LLM ("float16": ELLA's released weights
                       were trained on fp16 T5 features, see methods notes)
  feature_cache        optional path of a `t2ijax.data.feature_cache` file holding the LLM
                       features of the TRAIN split's captions in row order (record i = row i).
                       When set, training reads the features from it (``wrap_loader`` adds
                       "text_features" to every batch, checked against the batch's attention
                       mask) instead of running the LLM; ``t2ijax prepare`` (``prepare``) builds
                       it when missing. Empty = features computed on the fly.
  feature_cache_dtype  storage dtype of a cache built by ``prepare``: "float16" | "float32"
  text_mode            "fixed": the TSC sees all data.max_length (128) positions, pads
                       included, no mask, as released; "flexible": pad positions are masked
  caption_dropout      probability of training on T5("")
  prediction_type      "epsilon" (the paper); "v_prediction" / "sample" for other U-Nets
  schedule             {num_train_timesteps, beta_start, beta_end, beta_schedule}
  frozen_seed          seed for randomly initialised frozen modules
  min_snr_gamma        optional min-SNR-gamma loss weighting (`t2ijax.methods.common.denoising_loss`)
config.sample: {num_steps, guidance_scale, clip_sample (default: on for pixel-space U-Nets, off with a VAE)}
config.data.tokenizer must be the T5 tokenizer folder (or `shapes_word` for tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.methods.common import (
    WithCachedTextFeatures,
    DiffusionMethod,
    as_dict,
    field,
    frozen_text_encoder,
    frozen_denoiser,
    vae_decode,
    vae_encode,
    open_feature_cache,
    random_frozen_params,  # noqa: F401  (re-exported: the method's historical home)
    text_width,
    training_captions,
)
from t2ijax.models.ella import ELLA, ella_denoise

TEXT_MODES = ("fixed", "flexible")


class ELLAMethod(DiffusionMethod):
    """Method interface (t2ijax.train.method): trainable params = the TSC; frozen U-Net, T5 and VAE."""

    trainable_item = "connector"

    def __init__(self, config):
        super().__init__(config)
        m = config.model
        self.text_mode = str(field(m, "text_mode", "fixed"))
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"model.text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        self.frozen_seed = int(field(m, "frozen_seed", 0))
        self.feature_cache = field(m, "feature_cache")
        self.feature_cache_dtype = str(field(m, "feature_cache_dtype", "float16"))
        self.data_config = config.data
        self._build_frozen_modules(m)
        self._build_tsc(m)
        self.clip_sample = bool(config.sample.get("clip_sample", self.vae is None))

    # ---------------------------------------------------------------- modules

    def _build_frozen_modules(self, m):
        self.text_dtype = jnp.dtype(field(m, "text_dtype", "float16"))
        self._frozen_text = frozen_text_encoder(
            field(m, "text_encoder_path"), field(m, "text"), str(field(m, "text_encoder_type", "t5")),
            self.text_dtype, vocab_size=len(self.tokenizer), max_length=self.max_length, kinds=("t5", "llama"),
            what="ELLA LLM")
        self.text_encoder, self.text_encoder_path = self._frozen_text.module, self._frozen_text.path
        self._frozen_unet, self._frozen_vae, self.sample_size = frozen_denoiser(m, self.dtype, self.resolution, "ELLA")
        self.unet = self._frozen_unet.module
        self.vae = self._frozen_vae.module if self._frozen_vae is not None else None

    @property
    def text_width(self) -> int:
        return text_width(self.text_encoder)

    def _build_tsc(self, m):
        overrides = as_dict(field(m, "ella", {}))
        overrides.setdefault("dtype", self.dtype)
        try:
            self.tsc = ELLA(**overrides)
        except TypeError as e:
            raise ValueError(f"model.ella has a field ELLA lacks: {e}") from None
        self.tsc.check_config()
        d_model = self.text_width
        if self.tsc.input_dim not in (None, d_model) or (self.tsc.input_dim is None and self.tsc.width != d_model):
            raise ValueError(f"model.ella.input_dim={self.tsc.input_dim} must equal the LLM width {d_model}")
        if self.tsc.width != self.unet.cross_attention_dim:
            raise ValueError(f"model.ella.width={self.tsc.width} must equal the U-Net's cross_attention_dim "
                             f"{self.unet.cross_attention_dim}")

    # ---------------------------------------------------------------- frozen

    def frozen(self, config, shard_config=None):
        """{"unet", "text_encoder", ["vae"], "empty_features", "empty_mask"}; loaded or randomly initialised,
        each array straight onto its sharding when the loop passes the mesh (`shard_config`)."""
        rng = np.random.default_rng(self.frozen_seed)  # one stream, drawn U-Net, LLM, VAE in that order
        out = {"unet": self._frozen_unet.params(rng, shard_config),
               "text_encoder": self._frozen_text.params(rng, shard_config)}
        if self._frozen_vae is not None:
            out["vae"] = self._frozen_vae.params(rng, shard_config)
        out["empty_mask"] = jnp.asarray(self.empty_mask)
        out["empty_features"] = jax.jit(self.encode_text)(out["text_encoder"], jnp.asarray(self.empty_ids[None]),
                                                          jnp.asarray(self.empty_mask[None]))[0]
        return out

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        feats = jnp.zeros((1, self.max_length, self.text_width), self.dtype)
        return self.tsc.init(rng, feats, jnp.zeros((1,), jnp.int32))["params"]

    def encode_text(self, text_params, input_ids, attention_mask):
        """Frozen LLM last hidden state (B, L, width)."""
        return self.text_encoder.apply({"params": text_params}, input_ids, attention_mask)

    def _tsc_mask(self, mask):
        return mask.astype(bool) if self.text_mode == "flexible" else None

    def _to_model_space(self, frozen, images, key):
        if self.vae is None:
            return images
        return vae_encode(self.vae, frozen["vae"], images, key)

    def loss(self, params, frozen, batch, rng):
        images = batch["image"].astype(jnp.float32)
        drop_key, t_key, noise_key, vae_key = jax.random.split(rng, 4)
        if "text_features" in batch:  # from the feature cache (see wrap_loader)
            feats = batch["text_features"].astype(self.text_dtype)
        else:
            feats = self.encode_text(frozen["text_encoder"], batch["input_ids"], batch["attention_mask"])
        drop = self.drop_captions(drop_key, images.shape[0])
        feats = jnp.where(drop[:, None, None], frozen["empty_features"][None].astype(feats.dtype), feats)
        mask = jnp.where(drop[:, None], frozen["empty_mask"][None], batch["attention_mask"])
        feats = jax.lax.stop_gradient(feats)
        x0 = jax.lax.stop_gradient(self._to_model_space(frozen, images, vae_key))
        loss = self.denoising_loss(lambda x_t, t: ella_denoise(self._unet_apply, frozen["unet"], self.tsc, params,
                                                                x_t, t, feats, self._tsc_mask(mask)),
                                   x0, t_key, noise_key)
        return loss, {"caption_dropout_frac": jnp.mean(drop.astype(jnp.float32))}

    def _unet_apply(self, unet_params, x, t, context):
        return self.unet.apply({"params": unet_params}, x, t, context)

    # ---------------------------------------------------------------- feature cache

    def prepare(self, config) -> str | None:
        """Build `model.feature_cache` over the train split's captions (row order) if it is set and missing.

        Runs the frozen LLM (as `frozen` loads it) once over every caption; ``t2ijax prepare`` calls this.
        Returns the cache path, or None when no cache is configured.
        """
        import os

        from t2ijax.data.feature_cache import write_feature_cache

        if not self.feature_cache:
            return None
        path = os.path.expanduser(self.feature_cache)
        if os.path.exists(path):
            open_feature_cache(path, self.max_length, self.text_width)  # validates it against this config
            return path
        captions = training_captions(self.data_config)
        frozen = self.frozen(config)
        meta = {"encoder_path": self.text_encoder_path or f"random {type(self.text_encoder).__name__} "
                                                          f"(frozen_seed {self.frozen_seed})",
                "tokenizer": str(self.data_config.tokenizer), "split": "train"}
        write_feature_cache(self.text_encoder, frozen["text_encoder"], self.tokenizer, captions, path,
                            batch_size=32, max_length=self.max_length, dtype=self.feature_cache_dtype,
                            pooling="mean", metadata=meta)
        return path

    def wrap_loader(self, loader, split: str):
        """The train loader, plus "text_features" read from `model.feature_cache` when one is configured."""
        if not self.feature_cache or split != "train":
            return loader
        return WithCachedTextFeatures.from_path(loader, self.feature_cache, self.max_length, self.text_width)

    # ---------------------------------------------------------------- sampling

    def _denoise(self, params, x, t, cond):
        """diffusion.sample's denoiser: the TSC is re-run at every step from that step's timestep."""
        return ella_denoise(self._unet_apply, params["unet"], self.tsc, params["tsc"], x, t, cond["features"],
                            self._tsc_mask(cond["mask"]))

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale: float | None = None, paint=None, paint_scale: float = 1.0) -> np.ndarray:
        """uint8 images (N, H, W, 3) with deterministic DDIM and CFG against the TSC of T5("");
        image i's initial noise from `seeds[i]`, or all from one key `rng`. Paint-with-words is refused: the
        U-Net's cross-attention keys are the connector's learnt latent queries, each a mixture of every prompt
        token, so a phrase owns no key column to paint."""
        if paint is not None:
            raise ValueError("paint-with-words is not available with ELLA: the cross-attention keys are the TSC "
                             f"connector's {self.tsc.num_latents} latent queries, each mixing every prompt token, "
                             "so a phrase has no key columns to paint; paint a model conditioned on text tokens (txt2img, experts)")
        ids, mask = self.tokens(prompts)
        cond = {"features": jax.jit(self.encode_text)(frozen["text_encoder"], ids, mask), "mask": mask}
        uncond = {"features": jnp.broadcast_to(frozen["empty_features"][None], cond["features"].shape),
                  "mask": jnp.broadcast_to(frozen["empty_mask"][None], mask.shape)}

        def decode(x0):
            if self.vae is None:
                return x0
            return vae_decode(self.vae, frozen["vae"], x0)

        return self.sample_images(self._denoise, {"unet": frozen["unet"], "tsc": params}, cond, uncond,
                                  (self.sample_size, self.sample_size, self.unet.in_channels), seeds=seeds, rng=rng,
                                  num_steps=num_steps, guidance_scale=guidance_scale, decode=decode)

    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """The TSC in ELLA's released single-file layout (``t2ijax convert``)."""
        from t2ijax.weights import save_ella

        return [save_ella(self.tsc, jax.device_get(params), out_dir)]


def make_method(config) -> ELLAMethod:
    return ELLAMethod(config)
