"""ECLIPSE (arXiv 2312.04655): a non-diffusion unCLIP prior trained with a projection and a contrastive loss.

The prior (`t2ijax.models.prior.PriorTransformer`) maps CLIP text features plus a noise vector to a CLIP image
embedding in one forward pass. It trains on cached CLIP features alone (``data.name = "feature_cache"``, a cache
written by `t2ijax.data.clip_features.build_clip_feature_cache`; no image is decoded). Each record holds
`text_token_states` (L, E), `attention_mask` (L,), `text_embeds` (E,) and `image_embeds` (E,).

config.model:
  prior               PriorTransformer fields (embedding_dim = the CLIP width E, num_embeddings = data length L)
  objective           "eclipse": L_proj + lambda * L_CLS (paper Eq. 5; lambda 0 is the paper's "Projection" baseline)
                      "diffusion": the paper's Diffusion-Baseline prior: the same network with a timestep token,
                      predicting the (normalised) image embedding from a noised one; linear schedule, 1,000 steps;
                      sampled with 25 DDPM steps (DDIM, eta 1: DDPM's posterior on the strided chain) and CFG 4
  contrastive_weight  lambda (default 0.2, paper Eq. 5)
  temperature         tau of L_CLS. Unpublished; default 0.01, CLIP's own (logit scale 100) [choice, documented]
  learn_temperature   False (default): tau fixed; True: log(1/tau) is a trained parameter (clipped at log 100)
  projection_reduction "mean" (default, PyTorch's F.mse_loss over all elements) or "sum" (the squared L2 norm per
                      example of Eq. 3, averaged over the batch): the paper's code is unreleased [choice, documented]
  text_dropout        probability of training on the null text condition (zeros: pooled, token states and mask).
                      Default 0.0 for ECLIPSE (not stated in the paper) and 0.1 for the diffusion baseline (paper)
  schedule            the diffusion baseline's DDPM schedule (linear 1e-4..0.02, 1,000 steps)
  clip, source_data   optional: ``t2ijax prepare`` builds the caches of data.paths (train / validation / test)
                      by running this CLIPModel folder over the splits of this image-caption data config
config.sample: num_steps (25), guidance_scale (4.0): the diffusion baseline's prior sampling.

The contrastive term (Eq. 4) is image -> text only: predicted embeddings against the batch's pooled projected
text embeddings, cosine similarity over tau; it is computed on the global batch inside the jitted step, so a
batch sharded over `data` / `fsdp` gives the one-device value.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import diffusion
from t2ijax.methods.common import MethodHooks, as_dict, field
from t2ijax.models.prior import PriorTransformer

OBJECTIVES = ("eclipse", "diffusion")
FEATURE_KEYS = ("text_token_states", "attention_mask", "text_embeds", "image_embeds")
MAX_LOGIT_SCALE = 100.0
# the paper's Diffusion-Baseline prior: linear schedule, 1,000 steps (the DDPM defaults)
PRIOR_SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def projection_loss(pred, target, reduction: str = "mean"):
    """Paper Eq. 3: ||z_x - g(eps, z_y)||^2, averaged over elements ("mean") or summed per example ("sum")."""
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if reduction == "mean":
        return jnp.mean(err)
    if reduction == "sum":
        return jnp.mean(jnp.sum(err, axis=-1))
    raise ValueError(f"model.projection_reduction must be 'mean' or 'sum', got {reduction!r}")


def contrastive_loss(pred, text_embeds, logit_scale):
    """Paper Eq. 4: -mean_i log softmax_j(<pred_i, text_j> / tau)[i], <.,.> the cosine similarity, logit_scale
    = 1 / tau. Returns (loss, top-1 accuracy of pred_i picking text_i in the batch)."""
    p = pred.astype(jnp.float32)
    t = text_embeds.astype(jnp.float32)
    p = p / jnp.linalg.norm(p, axis=-1, keepdims=True)
    t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
    logits = logit_scale * p @ t.T
    labels = jnp.arange(p.shape[0])
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[labels, labels])
    return loss, jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def null_text(text_embeds, text_token_states, attention_mask, drop):
    """The text condition with the examples where `drop` (B,) is true replaced by the null condition: zeros for the
    pooled embedding, the token states and the mask (text dropout in training, the unconditional branch of CFG)."""
    return (jnp.where(drop[:, None], 0.0, text_embeds), jnp.where(drop[:, None, None], 0.0, text_token_states),
            jnp.where(drop[:, None], 0, attention_mask))


def cosine(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))


class EclipseMethod(MethodHooks):
    """Method interface (`t2ijax.train.method`); trainable params {"prior": ...[, "log_logit_scale": ()]}."""

    def __init__(self, config):
        m = config.model
        self.objective = str(field(m, "objective", "eclipse"))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        diffusion_prior = self.objective == "diffusion"
        prior = as_dict(m.prior)
        if "time_embedding" in prior:
            raise ValueError("model.prior.time_embedding is set by model.objective ('diffusion' adds it)")
        self.prior = PriorTransformer(**prior, time_embedding=diffusion_prior, dtype=jnp.dtype(config.compute_dtype))
        self.weight = float(field(m, "contrastive_weight", 0.2))
        self.temperature = float(field(m, "temperature", 0.01))
        self.learn_temperature = bool(field(m, "learn_temperature", False))
        self.reduction = str(field(m, "projection_reduction", "mean"))
        self.text_dropout = float(field(m, "text_dropout", 0.1 if diffusion_prior else 0.0))
        for name, value, ok in (("contrastive_weight", self.weight, self.weight >= 0),
                                ("temperature", self.temperature, self.temperature > 0),
                                ("text_dropout", self.text_dropout, 0 <= self.text_dropout <= 1)):
            if not ok:
                raise ValueError(f"model.{name}={value} is out of range")
        if diffusion_prior and self.weight:
            raise ValueError("the diffusion baseline has no contrastive term: set model.contrastive_weight=0")
        projection_loss(jnp.zeros(1), jnp.zeros(1), self.reduction)  # validates the name before any compute
        self.schedule = diffusion.DiscreteSchedule(**{**PRIOR_SCHEDULE, **as_dict(field(m, "schedule", {}))})
        self.sample_steps = int(config.sample.get("num_steps", 25))
        self.guidance_scale = float(config.sample.get("guidance_scale", 4.0))
        self.data = config.data
        self.flops_per_example = None

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        args = self.prior.example_inputs()
        kwargs = {"timestep": jnp.zeros((1,))} if self.prior.time_embedding else {}
        params = {"prior": self.prior.init(rng, *args, **kwargs)["params"]}
        if self.learn_temperature:
            params["log_logit_scale"] = jnp.asarray(np.log(1.0 / self.temperature), jnp.float32)
        return params

    def frozen(self, config):
        """The diffusion baseline's normalisation of image embeddings: per-dimension mean and std over the train
        cache (what diffusers' prior stores as clip_mean / clip_std); {} for ECLIPSE."""
        if self.objective != "diffusion":
            return {}
        from t2ijax.data.feature_cache import FeatureCache

        cache = FeatureCache(os.path.expanduser(self.data.get("paths", {}).get("train") or self.data.path))
        ids = cache.example_ids[:20_000]
        emb = np.concatenate([cache.lookup(ids[i:i + 1000])["image_embeds"] for i in range(0, len(ids), 1000)])
        emb = emb.astype(np.float64)
        return {"clip_mean": jnp.asarray(emb.mean(0), jnp.float32),
                "clip_std": jnp.asarray(np.maximum(emb.std(0), 1e-6), jnp.float32)}

    def _check(self, batch):
        missing = [k for k in FEATURE_KEYS if k not in batch]
        if missing:
            raise ValueError(f"ECLIPSE trains on cached CLIP features; the batch lacks {missing} (build the cache "
                             "with t2ijax.data.clip_features.build_clip_feature_cache, data.name='feature_cache')")

    def apply_prior(self, prior_params, noise, text, states, mask, timestep=None):
        kwargs = {"timestep": timestep} if timestep is not None else {}
        return self.prior.apply({"params": prior_params}, noise, text, states, mask, **kwargs)

    def loss(self, params, frozen, batch, rng):
        self._check(batch)
        target = batch["image_embeds"].astype(jnp.float32)
        b = target.shape[0]
        drop_key, noise_key, t_key = jax.random.split(rng, 3)
        drop = jax.random.bernoulli(drop_key, self.text_dropout, (b,)) if self.text_dropout else None
        text, states, mask = batch["text_embeds"], batch["text_token_states"], batch["attention_mask"]
        if drop is not None:
            text, states, mask = null_text(text, states, mask, drop)
        if self.objective == "diffusion":
            x0 = (target - frozen["clip_mean"]) / frozen["clip_std"]
            noise = jax.random.normal(noise_key, x0.shape)
            t = jax.random.randint(t_key, (b,), 0, self.schedule.num_train_timesteps)
            x_t = diffusion.add_noise(self.schedule, x0, noise, t)
            pred = self.apply_prior(params["prior"], x_t, text, states, mask, t)
            loss = jnp.mean(jnp.square(pred - x0))
            pred_emb = pred * frozen["clip_std"] + frozen["clip_mean"]
            return loss, {"mse": loss, "cosine_to_image": jnp.mean(cosine(pred_emb, target))}
        noise = jax.random.normal(noise_key, target.shape)
        pred = self.apply_prior(params["prior"], noise, text, states, mask)
        proj = projection_loss(pred, target, self.reduction)
        scale = self.logit_scale(params)
        cls, acc = contrastive_loss(pred, batch["text_embeds"], scale)
        metrics = {"projection_loss": proj, "contrastive_loss": cls, "pred_to_text_top1": acc,
                   "cosine_to_image": jnp.mean(cosine(pred, target))}
        if self.learn_temperature:
            metrics["temperature"] = 1.0 / scale
        return proj + self.weight * cls, metrics

    def logit_scale(self, params):
        if self.learn_temperature:
            return jnp.exp(jnp.minimum(params["log_logit_scale"], np.log(MAX_LOGIT_SCALE)))
        return jnp.float32(1.0 / self.temperature)

    # ---------------------------------------------------------------- inference

    def predict(self, params, frozen, text_embeds, text_token_states, attention_mask, *, seeds=None, rng=None,
                num_steps: int | None = None, guidance_scale: float | None = None):
        """`predict_image_embeds` with this run's prior (the diffusion baseline's normalisation from `frozen`)."""
        prior = params["prior"] if "prior" in params else params
        if self.objective == "diffusion":
            prior = dict(prior, clip_mean=frozen["clip_mean"][None], clip_std=frozen["clip_std"][None])
        return predict_image_embeds(self.prior, prior, text_embeds, text_token_states, attention_mask, seeds=seeds,
                                    rng=rng, num_steps=num_steps or self.sample_steps,
                                    guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale,
                                    schedule=self.schedule)

    def prepare(self, config) -> list[str]:
        """``t2ijax prepare``: the CLIP feature caches of data.paths from model.clip over model.source_data."""
        from t2ijax.data.clip_features import build_clip_feature_cache
        from t2ijax.data.tfds_builders import prepare as prepare_dataset

        clip, source = field(config.model, "clip"), field(config.model, "source_data")
        if not clip or not source:
            raise ValueError("t2ijax prepare builds ECLIPSE's feature caches from model.clip (a CLIPModel folder) "
                             "over model.source_data (a data config); set both, or build the caches yourself "
                             "with t2ijax.data.clip_features.build_clip_feature_cache")
        prepare_dataset(source)
        written = []
        for split, path in dict(config.data.paths).items():
            path = os.path.expanduser(path)
            if path and not os.path.exists(path):
                build_clip_feature_cache(clip, source, split, path)
                written.append(path)
        return written

    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """The prior in the released ECLIPSE / diffusers `PriorTransformer` folder layout (``t2ijax convert``);
        the diffusion baseline's clip_mean / clip_std hold its normalisation, as diffusers' priors do."""
        from t2ijax.weights.eclipse import save_eclipse_prior

        prior = jax.device_get(params["prior"])
        if self.objective == "diffusion":
            frozen = self.frozen(None)
            prior = dict(prior, clip_mean=np.asarray(frozen["clip_mean"])[None],
                         clip_std=np.asarray(frozen["clip_std"])[None])
        path = os.path.join(out_dir, "prior")
        save_eclipse_prior(self.prior, prior, path)
        return [path]


def predict_image_embeds(prior: PriorTransformer, params, text_embeds, text_token_states, attention_mask, *,
                         seeds=None, rng=None, num_steps: int = 25, guidance_scale: float = 4.0, schedule=None):
    """(B, E) CLIP image embeddings from CLIP text features with a trained or loaded prior; the noise of example i
    from seeds[i] (or all from `rng`). ECLIPSE (no time embedding): one forward pass. A diffusion prior: DDPM
    sampling (DDIM with eta 1 on the strided chain, `num_steps`) with classifier-free guidance against the null
    condition (zeros), un-normalised by the params' clip_mean / clip_std (diffusers' post_process_latents);
    `schedule` is its DDPM schedule (default PRIOR_SCHEDULE: a prior folder does not store one)."""
    from t2ijax.train.sampling import initial_noise

    b = text_embeds.shape[0]
    noise = initial_noise(b, (prior.embedding_dim,), seeds=seeds, rng=rng)
    if not prior.time_embedding:
        return prior.apply({"params": params}, noise, text_embeds, text_token_states, attention_mask)
    cond = (text_embeds, text_token_states, attention_mask)
    null = null_text(text_embeds, text_token_states, attention_mask, jnp.ones((b,), bool))
    sampler = diffusion.DDIM(schedule=schedule or diffusion.DiscreteSchedule(**PRIOR_SCHEDULE),
                             prediction_type="sample", eta=1.0, timestep_spacing="leading")
    # the ancestral noise comes from one key for the batch
    key = rng if rng is not None else jax.random.PRNGKey(0 if seeds is None else int(np.sum(seeds)) % 2**31)
    x0 = diffusion.sample(_denoise_prior(prior), params, sampler, noise, cond, num_steps=int(num_steps), uncond=null,
                          guidance_scale=float(guidance_scale), key=key)
    return prior.apply({"params": params}, x0, method="post_process_latents")


_DENOISERS: dict = {}


def _denoise_prior(prior: PriorTransformer):
    """One denoise function object per prior module (the sampling loop's jit cache keys on it)."""
    if prior not in _DENOISERS:
        def denoise(params, x, t, cond):
            text, states, mask = cond
            return prior.apply({"params": params}, x, text, states, mask, timestep=t)
        _DENOISERS[prior] = denoise
    return _DENOISERS[prior]


def make_method(config) -> EclipseMethod:
    return EclipseMethod(config)
