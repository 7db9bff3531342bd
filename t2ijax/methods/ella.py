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
  unet_path / unet     a diffusers U-Net folder (frozen), or a U-Net config initialised at
                       random with `frozen_seed` (smoke tests only: a random frozen U-Net learns nothing useful)
  vae_path / vae       optional frozen VAE (folder or config): train in its latent space;
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
config.sample: {num_steps, guidance_scale, clip_sample (default: on for pixel-space U-Nets, off with a VAE)}
config.data.tokenizer must be the T5 tokenizer folder (or `shapes_word` for tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import diffusion
from t2ijax.models.ella import ELLA, ella_denoise
from t2ijax.train.sampling import initial_noise

TEXT_MODES = ("fixed", "flexible")


def _field(cfg, name, default=None):
    return cfg[name] if name in cfg and cfg[name] not in (None, "") else default


def _as_dict(value) -> dict:
    if value is None:
        return {}
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def random_frozen_params(module, rng: np.random.Generator, *args, **kwargs):
    """Random params for a stand-in frozen module, drawn on the host (no init compilation).

    Norm scales 1, biases 0, other leaves N(0, 1/fan_in) with fan_in = prod(shape[:-1])
    (embeddings N(0, 1)). Only for smoke runs without pretrained weights.
    """
    from t2ijax.models.layers import abstract_init

    abstract, _ = abstract_init(module, *args, **kwargs)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = 1 if name == "embedding" else max(1, int(np.prod(leaf.shape[:-1])))
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def training_captions(data_config) -> list[str]:
    """The train split's captions (kind `data_config.caption`) in row order: record i of a feature cache."""
    from t2ijax.data.pipeline import make_loader

    loader = make_loader(data_config, split="train", batch_size=1, seed=0, shuffle=False, drop_remainder=False)
    return [loader.caption(i) for i in range(len(loader.source))]


class CachedFeaturesLoader:
    """Wraps a data loader: adds "text_features" (B, L, D) = cache[batch["record"]] to every batch.

    Each record's stored attention mask must equal the batch's (same tokenizer and max_length,
    same caption): a cheap check that the cache belongs to this split and tokenization.
    """

    def __init__(self, loader, cache):
        self.loader, self.cache = loader, cache

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = dict(next(self.loader))
        if "record" not in batch:
            raise ValueError("model.feature_cache needs batches with a 'record' index (a t2ijax.data.pipeline "
                             "dataset, not data.name='synthetic')")
        rows = [self.cache[int(r)] for r in batch["record"]]
        mask = np.stack([r["attention_mask"] for r in rows]).astype(np.int32)
        if not np.array_equal(mask, np.asarray(batch["attention_mask"], np.int32)):
            bad = [int(r) for r, a, b in zip(batch["record"], mask, batch["attention_mask"]) if not np.array_equal(a, b)]
            raise ValueError(f"feature cache {self.cache.path} does not match the data at train rows {bad[:5]}: "
                             "rebuild it for this dataset, caption kind, tokenizer and max_length")
        batch["text_features"] = np.stack([r["hidden_states"] for r in rows])
        return batch

    def get_state(self):
        return self.loader.get_state()

    def set_state(self, state) -> None:
        self.loader.set_state(state)

    def __getattr__(self, name):  # caption(), example(), source ... of the wrapped loader
        return getattr(self.loader, name)


class ELLAMethod:
    """Method interface (t2ijax.train.method): trainable params = the TSC; frozen U-Net, T5 and VAE."""

    flops_per_example = None  # taken from XLA's cost analysis of the compiled step
    trainable_item = "connector"

    def __init__(self, config):
        from t2ijax.data.tokenizer import load_tokenizer, tokenize

        m = config.model
        self.dtype = jnp.dtype(config.compute_dtype)
        self.max_length = int(config.data.max_length)
        self.resolution = int(config.data.resolution)
        self.text_mode = str(_field(m, "text_mode", "fixed"))
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"model.text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        self.caption_dropout = float(_field(m, "caption_dropout", 0.1))
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"model.caption_dropout must be in [0, 1], got {self.caption_dropout}")
        self.prediction_type = str(_field(m, "prediction_type", "epsilon"))
        diffusion.schedules.check_prediction_type(self.prediction_type)
        self.schedule = diffusion.DiscreteSchedule(**_as_dict(_field(m, "schedule", {})))
        self.frozen_seed = int(_field(m, "frozen_seed", 0))
        self.feature_cache = _field(m, "feature_cache")
        self.feature_cache_dtype = str(_field(m, "feature_cache_dtype", "float16"))
        self.data_config = config.data
        self.sample_steps = int(config.sample.num_steps)
        self.guidance_scale = float(config.sample.guidance_scale)
        self.tokenizer = load_tokenizer(config.data.tokenizer, self.max_length)
        self._tokenize = tokenize
        self._build_frozen_modules(m)
        self._build_tsc(m)
        # DDIM's x0 clipping (diffusers' clip_sample) suits pixel-space U-Nets (data in [-1, 1]), not VAE latents.
        self.clip_sample = bool(config.sample.get("clip_sample", self.vae is None))

    # ---------------------------------------------------------------- modules

    def _build_frozen_modules(self, m):
        from t2ijax.models.unet import UNet2DConditionModel
        from t2ijax.models.vae import AutoencoderKL
        from t2ijax.weights.torch_layout import read_config

        self.text_dtype = jnp.dtype(_field(m, "text_dtype", "float16"))
        self.text_encoder_path = _field(m, "text_encoder_path")
        self.text_encoder = self._build_text_encoder(m)

        self.unet_path = _field(m, "unet_path")
        if self.unet_path:
            self.unet = UNet2DConditionModel.from_config(read_config(self.unet_path), dtype=self.dtype)
        elif _field(m, "unet"):
            self.unet = UNet2DConditionModel.from_config(_as_dict(m.unet), dtype=self.dtype)
        else:
            raise ValueError("ELLA needs model.unet_path (a diffusers U-Net folder) or model.unet (its config)")

        self.vae_path = _field(m, "vae_path")
        self.vae = None
        if self.vae_path:
            self.vae = AutoencoderKL.from_config(read_config(self.vae_path), dtype=self.dtype)
        elif _field(m, "vae"):
            self.vae = AutoencoderKL.from_config(_as_dict(m.vae), dtype=self.dtype)
        channels = self.vae.latent_channels if self.vae is not None else 3
        if self.unet.in_channels != channels:
            raise ValueError(f"the U-Net takes {self.unet.in_channels} input channels but the "
                             f"{'VAE latents have' if self.vae is not None else 'pixel images have'} {channels}")
        factor = 2 ** (len(self.vae.block_out_channels) - 1) if self.vae is not None else 1
        if self.resolution % factor:
            raise ValueError(f"data.resolution {self.resolution} is not divisible by the VAE factor {factor}")
        self.sample_size = self.resolution // factor

    def _build_text_encoder(self, m):
        """The frozen LLM module: from a local folder's config.json, or random of `text_encoder_type`."""
        from t2ijax.models.text import T5Config, T5EncoderModel
        from t2ijax.models.text.llama import LlamaConfig, LlamaModel
        from t2ijax.models.text.t5 import T5_MODEL_TYPES
        from t2ijax.weights.torch_layout import read_config

        if self.text_encoder_path:
            cfg = read_config(self.text_encoder_path)
            kind = cfg.get("model_type")
            if kind in T5_MODEL_TYPES:
                return T5EncoderModel(T5Config.from_hf(cfg), dtype=self.text_dtype)
            if kind == "llama":
                return LlamaModel(LlamaConfig.from_hf(cfg), dtype=self.text_dtype)
            raise ValueError(f"{self.text_encoder_path}/config.json has model_type {kind!r}; ELLA's LLM must be "
                             f"one of {T5_MODEL_TYPES} or 'llama'")
        fields = _as_dict(_field(m, "text"))
        if not fields:
            raise ValueError("ELLA needs model.text_encoder_path (a local T5 / Llama folder) or model.text "
                             "(config fields of a random frozen encoder)")
        if not int(fields.get("vocab_size", 0)):
            fields["vocab_size"] = len(self.tokenizer)
        kind = str(_field(m, "text_encoder_type", "t5"))
        config_class, module_class = {"t5": (T5Config, T5EncoderModel), "llama": (LlamaConfig, LlamaModel)}.get(
            kind, (None, None))
        if config_class is None:
            raise ValueError(f"model.text_encoder_type must be 't5' or 'llama', got {kind!r}")
        try:
            return module_class(config_class(**fields), dtype=self.text_dtype)
        except TypeError as e:
            raise ValueError(f"model.text has a field {config_class.__name__} lacks: {e}") from None

    @property
    def text_width(self) -> int:
        cfg = self.text_encoder.config
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    def _build_tsc(self, m):
        overrides = _as_dict(_field(m, "ella", {}))
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

    def frozen(self, config):
        """{"unet", "text_encoder", ["vae"], "empty_features", "empty_mask"}; loaded or randomly initialised."""
        from t2ijax.weights import load_text_encoder, load_unet, load_vae

        rng = np.random.default_rng(self.frozen_seed)
        out = {}
        if self.unet_path:
            out["unet"] = load_unet(self.unet_path)[1]
        else:
            sample, t, context, added = self.unet.example_inputs(context_length=8)
            kwargs = {"added_cond_kwargs": added} if added is not None else {}
            out["unet"] = random_frozen_params(self.unet, rng, sample, t, context, **kwargs)
        if self.text_encoder_path:
            out["text_encoder"] = load_text_encoder(self.text_encoder_path, dtype=self.text_dtype)[1]
        else:
            ids = jnp.zeros((1, self.max_length), jnp.int32)
            out["text_encoder"] = random_frozen_params(self.text_encoder, rng, ids, jnp.ones_like(ids))
        if self.vae is not None:
            if self.vae_path:
                out["vae"] = load_vae(self.vae_path)[1]
            else:
                size = 2 ** (len(self.vae.block_out_channels) - 1)
                out["vae"] = random_frozen_params(self.vae, rng, jnp.zeros((1, size, size, self.vae.in_channels)))
        empty = self._tokenize(self.tokenizer, [""], self.max_length)
        out["empty_mask"] = jnp.asarray(empty["attention_mask"][0])
        out["empty_features"] = jax.jit(self.encode_text)(out["text_encoder"], jnp.asarray(empty["input_ids"]),
                                                          jnp.asarray(empty["attention_mask"]))[0]
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
        mean, logvar = self.vae.apply({"params": frozen["vae"]}, images, method="encode")
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        return self.vae.scale_latents(z)

    def loss(self, params, frozen, batch, rng):
        images = batch["image"].astype(jnp.float32)
        b = images.shape[0]
        drop_key, t_key, noise_key, vae_key = jax.random.split(rng, 4)
        if "text_features" in batch:  # from the feature cache (see wrap_loader)
            feats = batch["text_features"].astype(self.text_dtype)
        else:
            feats = self.encode_text(frozen["text_encoder"], batch["input_ids"], batch["attention_mask"])
        drop = jax.random.bernoulli(drop_key, self.caption_dropout, (b,))
        feats = jnp.where(drop[:, None, None], frozen["empty_features"][None].astype(feats.dtype), feats)
        mask = jnp.where(drop[:, None], frozen["empty_mask"][None], batch["attention_mask"])
        feats = jax.lax.stop_gradient(feats)
        x0 = jax.lax.stop_gradient(self._to_model_space(frozen, images, vae_key))
        t = jax.random.randint(t_key, (b,), 0, self.schedule.num_train_timesteps)
        noise = jax.random.normal(noise_key, x0.shape)
        x_t = diffusion.add_noise(self.schedule, x0, noise, t)
        alpha, sigma = diffusion.alpha_sigma(self.schedule, t)
        target = diffusion.training_target(self.prediction_type, x0, noise, alpha, sigma)
        pred = ella_denoise(self._unet_apply, frozen["unet"], self.tsc, params, x_t, t, feats,
                            self._tsc_mask(mask))
        loss = jnp.mean((pred.astype(jnp.float32) - target) ** 2)
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
            self._open_cache(path)  # validates the existing cache against this config
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

    def _open_cache(self, path):
        from t2ijax.data.feature_cache import FeatureCache

        cache = FeatureCache(path)
        meta = cache.metadata
        if int(meta["max_length"]) != self.max_length or int(meta["hidden_size"]) != self.text_width:
            raise ValueError(f"feature cache {path} holds ({meta['max_length']}, {meta['hidden_size']}) features; "
                             f"this config needs ({self.max_length}, {self.text_width}) (data.max_length, LLM width)")
        return cache

    def wrap_loader(self, loader, split: str):
        """The train loader, plus "text_features" read from `model.feature_cache` when one is configured."""
        if not self.feature_cache or split != "train":
            return loader
        import os

        path = os.path.expanduser(self.feature_cache)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model.feature_cache {path} does not exist: run `t2ijax prepare` with this "
                                    "config (or t2ijax.data.feature_cache.build_feature_cache) first")
        cache = self._open_cache(path)
        rows = len(getattr(loader, "source", ()))
        if rows != len(cache):
            raise ValueError(f"feature cache {path} has {len(cache)} records but the train split has {rows} rows "
                             "(the cache must hold the split's captions in row order)")
        return CachedFeaturesLoader(loader, cache)

    # ---------------------------------------------------------------- sampling

    def _denoise(self, params, x, t, cond):
        """diffusion.sample's denoiser: the TSC is re-run at every step from that step's timestep."""
        return ella_denoise(self._unet_apply, params["unet"], self.tsc, params["tsc"], x, t, cond["features"],
                            self._tsc_mask(cond["mask"]))

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale: float | None = None) -> np.ndarray:
        """uint8 images (N, H, W, 3) with deterministic DDIM and CFG against the TSC of T5("").

        The initial noise comes from `seeds` (one per prompt; image i is a function of prompt i and seed i
        only) or from one key `rng` for the batch (`t2ijax.train.sampling.initial_noise`)."""
        if not prompts:
            raise ValueError("sample needs at least one prompt")
        n = len(prompts)
        tok = self._tokenize(self.tokenizer, list(prompts), self.max_length)
        ids, mask = jnp.asarray(tok["input_ids"]), jnp.asarray(tok["attention_mask"])
        cond = {"features": jax.jit(self.encode_text)(frozen["text_encoder"], ids, mask), "mask": mask}
        uncond = {"features": jnp.broadcast_to(frozen["empty_features"][None], cond["features"].shape),
                  "mask": jnp.broadcast_to(frozen["empty_mask"][None], mask.shape)}
        sampler = diffusion.DDIM(schedule=self.schedule, prediction_type=self.prediction_type,
                                 timestep_spacing="trailing", clip_sample=self.clip_sample)
        x_T = initial_noise(n, (self.sample_size, self.sample_size, self.unet.in_channels), seeds=seeds, rng=rng)
        x0 = diffusion.sample(self._denoise, {"unet": frozen["unet"], "tsc": params}, sampler, x_T, cond,
                              num_steps=int(num_steps or self.sample_steps), uncond=uncond,
                              guidance_scale=float(self.guidance_scale if guidance_scale is None else guidance_scale))
        if self.vae is not None:
            x0 = self.vae.apply({"params": frozen["vae"]}, self.vae.unscale_latents(x0), method="decode")
        return np.asarray(jnp.clip((x0 + 1.0) * 127.5, 0, 255).round().astype(jnp.uint8))

    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """The TSC in ELLA's released single-file layout (``t2ijax convert``)."""
        from t2ijax.weights import save_ella

        return [save_ella(self.tsc, jax.device_get(params), out_dir)]


def make_method(config) -> ELLAMethod:
    return ELLAMethod(config)
