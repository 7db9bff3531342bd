"""The unCLIP decoder ECLIPSE drives, and the text -> prior -> decoder pipeline (Kandinsky 2.2 style).

Training: a U-Net conditioned on a CLIP image embedding alone (Kandinsky 2.2's decoder conditioning, supported by
`t2ijax.models.unet`: ``addition_embed_type="image"`` adds a projected embedding to the time embedding and
``encoder_hid_dim_type="image_proj"`` turns it into the cross-attention tokens) learns to denoise Shapes images
given the frozen CLIP's embedding of the same image, computed on the fly by the CLIP vision tower. With
probability ``model.embed_dropout`` the embedding is replaced by the CLIP embedding of an all-zero image
(zeros as the vision tower's normalised input, as Kandinsky's `get_zero_embed`), Kandinsky's negative
embedding, so that guidance works against it.

Sampling (``t2ijax sample`` / ``eval``): prompt -> frozen CLIP text tower (token states + pooled projected
embedding) -> prior (``model.prior``: an ECLIPSE or diffusion-prior folder in the diffusers `PriorTransformer`
layout, e.g. ``t2ijax convert`` of an eclipse run, or a released ECLIPSE prior) -> image embedding -> decoder
with classifier-free guidance against the negative embedding: ``model.negative = "zero_image"`` (Kandinsky's
default with no negative prompt) or ``"empty_prompt"`` (the prior's output for the empty prompt).

config.model:
  clip            a Hugging Face CLIPModel folder (e.g. `t2ijax convert` of a configs/clip_shapes.py run);
                  its tokenizer (saved there) is the data tokenizer
  prior           a prior folder (see above); needed for sampling only
  unet            diffusers UNet2DConditionModel config (pixel space: in/out channels 3, image conditioning)
  embed_dropout   probability of training on the negative embedding (default 0.1)
  negative        "zero_image" | "empty_prompt"
  prior_steps, prior_guidance_scale   sampling of a diffusion prior (25 steps, CFG 4 by default; ECLIPSE ignores them)
  schedule, prediction_type           the decoder's DDPM set-up (`DiffusionMethod`)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.eval.clip_score import CLIP_MEAN, CLIP_STD
from t2ijax.methods.common import DiffusionMethod, as_dict, field
from t2ijax.methods.eclipse import predict_image_embeds

NEGATIVES = ("zero_image", "empty_prompt")


def clip_pixels_jax(images, image_size: int):
    """[-1, 1] NHWC images -> CLIP's normalised input, in JAX (inside the jitted step). At the CLIP's own
    resolution this equals `t2ijax.eval.clip_score.clip_pixels` of the same uint8 images; other sizes are
    resized bicubically (antialiased) instead of PIL's resize-and-crop."""
    x = (images.astype(jnp.float32) + 1.0) / 2.0
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "bicubic")
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


class UnCLIPDecoderMethod(DiffusionMethod):
    """Method interface (`t2ijax.train.method`); trainable params: the decoder U-Net."""

    def __init__(self, config):
        from t2ijax.methods.clip import export_folder
        from t2ijax.models.unet import UNet2DConditionModel
        from t2ijax.weights import load_clip

        super().__init__(config)
        m = config.model
        self.clip_path = str(field(m, "clip", ""))
        if not self.clip_path:
            raise ValueError("model.clip must name a CLIPModel folder (train one with configs/clip_shapes.py and "
                             "`t2ijax convert` it)")
        self.clip, self._clip_params = load_clip(export_folder(self.clip_path))
        self.embed_dim = int(self.clip.projection_dim)
        unet_cfg = as_dict(m.unet)
        unet_cfg["encoder_hid_dim"] = unet_cfg.get("encoder_hid_dim") or self.embed_dim  # 0: the CLIP's
        if unet_cfg["encoder_hid_dim"] != self.embed_dim:
            raise ValueError(f"model.unet.encoder_hid_dim={unet_cfg.get('encoder_hid_dim')} must equal the CLIP "
                             f"projection_dim {self.embed_dim}")
        if unet_cfg.get("addition_embed_type") != "image" or unet_cfg.get("encoder_hid_dim_type") != "image_proj":
            raise ValueError("the decoder is conditioned on the image embedding alone: set model.unet."
                             "addition_embed_type='image' and encoder_hid_dim_type='image_proj'")
        self.unet = UNet2DConditionModel.from_config(unet_cfg, dtype=self.dtype)
        self.embed_dropout = float(field(m, "embed_dropout", 0.1))
        self.negative = str(field(m, "negative", "zero_image"))
        if self.negative not in NEGATIVES:
            raise ValueError(f"model.negative must be one of {NEGATIVES}, got {self.negative!r}")
        self.prior_path = str(field(m, "prior", ""))
        self.prior_steps = int(field(m, "prior_steps", 25))
        self.prior_guidance_scale = float(field(m, "prior_guidance_scale", 4.0))
        self.image_size = int(self.clip.vision_config.image_size)
        self._prior = None

    # ---------------------------------------------------------------- frozen networks

    def frozen(self, config):
        """The CLIP and the negative (all-zero image) embedding; the prior is loaded at sampling time."""
        from t2ijax.data.clip_features import zero_image_embed

        zero_embed = jnp.asarray(zero_image_embed(self.clip, self._clip_params, self.image_size))
        return {"clip": self._clip_params, "zero_embed": zero_embed}

    def image_embeds(self, clip_params, images):
        """(B, E) projected CLIP image embeddings of [-1, 1] images (unnormalised, as Hugging Face returns)."""
        return self.clip.apply({"params": clip_params}, clip_pixels_jax(images, self.image_size),
                               method="get_image_features")

    def prior(self):
        """(module, params) of `model.prior`, loaded once."""
        if self._prior is None:
            if not self.prior_path:
                raise ValueError("sampling from text needs model.prior: a prior folder (an ECLIPSE or diffusion "
                                 "prior in the diffusers PriorTransformer layout, e.g. `t2ijax convert` of an eclipse "
                                 "run), e.g. --config.model.prior=runs/eclipse_shapes/export/prior")
            from t2ijax.weights import load_eclipse_prior

            self._prior = load_eclipse_prior(self.prior_path)
            module = self._prior[0]
            if module.embedding_dim != self.embed_dim or module.num_embeddings != self.max_length:
                raise ValueError(f"prior {self.prior_path} takes ({module.num_embeddings}, {module.embedding_dim}) "
                                 f"text features; this CLIP and data.max_length give ({self.max_length}, "
                                 f"{self.embed_dim})")
        return self._prior

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        sample, t, context, added = self.unet.example_inputs()
        return self.unet.init(rng, sample, t, context, added_cond_kwargs=added)["params"]

    def _denoise(self, unet_params, x, t, image_embeds):
        context = jnp.zeros((x.shape[0], 1, self.unet.cross_attention_dim), x.dtype)  # ignored by image_proj
        return self.unet.apply({"params": unet_params}, x, t, context,
                               added_cond_kwargs={"image_embeds": image_embeds})

    def loss(self, params, frozen, batch, rng):
        x0 = batch["image"].astype(jnp.float32)
        drop_key, t_key, noise_key = jax.random.split(rng, 3)
        emb = jax.lax.stop_gradient(self.image_embeds(frozen["clip"], x0))
        drop = jax.random.bernoulli(drop_key, self.embed_dropout, (x0.shape[0],))
        emb = jnp.where(drop[:, None], frozen["zero_embed"][None], emb)
        loss = self.denoising_loss(lambda x_t, t: self._denoise(params, x_t, t, emb), x0, t_key, noise_key)
        return loss, {"embed_dropout_frac": jnp.mean(drop.astype(jnp.float32))}

    # ---------------------------------------------------------------- sampling

    def text_features(self, frozen, prompts):
        """(text_embeds (N, E), token states (N, L, E), mask (N, L)) of the frozen CLIP."""
        ids, mask = self.tokens(prompts)
        states, pooled = self.clip.apply({"params": frozen["clip"]}, ids, mask, method="encode")
        return pooled, states, mask

    def prior_embeds(self, frozen, prompts, seeds):
        module, prior_params = self.prior()
        text, states, mask = self.text_features(frozen, prompts)
        if states.shape[-1] != module.embedding_dim:
            raise ValueError(f"the CLIP's text width {states.shape[-1]} differs from the prior's embedding_dim "
                             f"{module.embedding_dim} (ECLIPSE needs a CLIP whose text width equals its projection)")
        return predict_image_embeds(module, prior_params, text, states, mask, seeds=seeds,
                                    num_steps=self.prior_steps, guidance_scale=self.prior_guidance_scale)

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale: float | None = None, image_embeds=None) -> np.ndarray:
        """uint8 images (N, H, W, 3): text -> prior -> decoder (or the decoder alone from given `image_embeds`);
        image i's prior noise and initial image noise from seeds[i]."""
        n = len(prompts)
        if seeds is None:
            seeds = list(range(n)) if rng is None else [int(s) for s in jax.random.randint(rng, (n,), 0, 2**31 - 1)]
        if image_embeds is None:
            image_embeds = self.prior_embeds(frozen, prompts, seeds)
        if self.negative == "zero_image":
            negative = jnp.broadcast_to(frozen["zero_embed"][None], image_embeds.shape)
        else:
            negative = self.prior_embeds(frozen, [""] * n, seeds)
        return self.sample_images(self._denoise, params, jnp.asarray(image_embeds), negative,
                                  (self.resolution, self.resolution, 3), seeds=seeds, num_steps=num_steps,
                                  guidance_scale=guidance_scale)

    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """The decoder as a diffusers U-Net folder (``t2ijax convert``)."""
        import os

        from t2ijax.weights import save_unet

        path = os.path.join(out_dir, "unet")
        save_unet(self.unet, jax.device_get(params), path)
        return [path]


def make_method(config) -> UnCLIPDecoderMethod:
    return UnCLIPDecoderMethod(config)
