"""Staged expert denoisers: eDiff-I's expert tree and ERNIE-ViLG 2.0's mixture of denoising experts.

The noise axis is split into intervals (`t2ijax.diffusion.experts.ExpertPartition`), each owned by its
own U-Net; the U-Nets are stacked on a leading ``expert`` parameter axis (`t2ijax.models.experts`), all
initialised from one parent run (``config.init_from``) and fine-tuned only on their interval's noise
levels. Sampling runs, at each step, only the expert whose interval holds that step's noise level.

config.model (besides txt2img's unet / text / caption_dropout / schedule / prediction_type):
  formulation       "ddpm" (ERNIE: DDPM schedule, `prediction_type`, DDIM sampling) | "edm" (eDiff-I:
                    preconditioned D(x; sigma), log-normal sigma, loss weight lambda(sigma), sigma sampling)
  edm               {p_mean -1.2, p_std 1.2, sigma_data 0.5, sigma_min 0.002, sigma_max 80, rho 7}
  experts           {partition: single | ernie | equal_mass | ediffi_tree | boundaries, num_experts, nodes,
                     boundaries (see `diffusion.experts.from_config`),
                     mode: "vmap" (every trained expert in one jitted step, each on its own micro-batch of
                           batch_size / n examples and its own noise draws) |
                           "round_robin" | "by_mass" (sequential: each step trains one expert on the whole
                           batch, in turn or drawn with its interval's probability as ERNIE's Algorithm 1),
                     step: how that one step computes the experts: "vmap" (jax.vmap over the stacked experts;
                           with a mesh `expert` axis each device group runs its own experts) or "unrolled" (one
                           expert after another in the same jitted step: the same numbers; on a single CPU
                           device 3-5x faster, as XLA:CPU runs vmapped convolutions with batched weights slowly),
                     train: expert indices to train (default all; the others stay bit-identical),
                     parents: for init_from an ensemble, parent expert index of each expert (grows a tree),
                     sources: per expert, "" (from init_from) or "workdir[:index]": take that expert from another
                              run (swap one expert; the checkpoint keeps each expert addressable as a row)}
  train_text_encoder  True: the shared text encoder is trained with the experts (ERNIE); False: frozen
  vae_path / vae    optional frozen VAE (a diffusers folder, or a config for random weights): latent diffusion
                    (ERNIE-ViLG 2.0); without one the U-Net works on pixels (eDiff-I, Shapes)
  conditioning      "text" (the trained text encoder) | "multi_encoder" (eDiff-I: frozen T5 + CLIP text +
                    CLIP image embedding, `t2ijax.methods.ediffi_conditioning`)
config.sample: num_steps, guidance_scale, sampler ("ddim" for ddpm; "heun" | "euler" | "dpm" for edm).

Clipping (config.optim.grad_clip_norm) is per expert, so the stacked step equals training each expert
alone (with a frozen text encoder; a trained shared encoder is clipped by its own norm).

The denoiser's conditioning is a dict: "context" (B, L, D) cross-attention states, optional
"class_labels" for the U-Net's class embedding and optional "low_res" (B, H, W, C) concatenated to its
input channels (super-resolution stages). A `conditioner` builds it; `TextConditioner` is the trained
CLIP-style text encoder of txt2img.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import diffusion
from t2ijax.diffusion import experts as partitions
from t2ijax.methods.common import SIGMA_SAMPLERS, EDMTraining, as_dict, denoising_loss, field
from t2ijax.methods.txt2img import Txt2ImgMethod
from t2ijax.models.experts import expert_params, num_stacked, stack_experts

MODES = ("vmap", "round_robin", "by_mass")


def _tree_reshape(tree, lead: tuple[int, ...]):
    return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), tree)


class TextConditioner:
    """The trained CLIP-style text encoder (txt2img's): params["text_encoder"], caption dropout to the
    empty caption, which is also the classifier-free-guidance negative."""

    param_keys = ("text_encoder",)

    def __init__(self, method: Txt2ImgMethod):
        self.method = method

    def init(self, rng) -> dict:
        ids = jnp.zeros((1, self.method.max_length), jnp.int32)
        return {"text_encoder": self.method.text_encoder.init(rng, ids, jnp.ones_like(ids))["params"]}

    def frozen(self, config) -> dict:
        return {}

    def example_cond(self, batch: int) -> dict:
        width = self.method.text_encoder.config.hidden_size
        return {"context": jnp.zeros((batch, self.method.max_length, width))}

    def train_cond(self, params, frozen, batch, key) -> dict:
        m = self.method
        drop = m.drop_captions(key, batch["input_ids"].shape[0])[:, None]
        ids = jnp.where(drop, jnp.asarray(m.empty_ids)[None], batch["input_ids"])
        mask = jnp.where(drop, jnp.asarray(m.empty_mask)[None], batch["attention_mask"])
        context = m.encode_text(params["text_encoder"], ids, mask)
        cond = {"context": context if m.train_text_encoder else jax.lax.stop_gradient(context)}
        if m.knowledge is not None and m.knowledge.key_tokens:
            cond["key_tokens"] = m.knowledge.key_token_weights(batch, jax.random.fold_in(key, 1), ~drop[:, 0])
        return cond

    def prompt_cond(self, params, frozen, prompts, **unused) -> tuple[dict, dict]:
        m = self.method
        ids, mask = m.tokens(prompts)
        n = len(prompts)
        cond = m.encode_text(params["text_encoder"], ids, mask)
        uncond = m.encode_text(params["text_encoder"], jnp.asarray(np.repeat(m.empty_ids[None], n, 0)),
                               jnp.asarray(np.repeat(m.empty_mask[None], n, 0)))
        return {"context": cond}, {"context": uncond}


class ExpertsMethod(Txt2ImgMethod):
    """Method interface (t2ijax.train.method); trainable params {"unet": stacked experts, "text_encoder"}."""

    #: channels the conditioning concatenates to the U-Net input (super-resolution: the low-res image)
    extra_in_channels = 0

    def __init__(self, config):
        from t2ijax.methods.common import frozen_vae

        m = config.model
        # latent diffusion (ERNIE-ViLG 2.0) with a frozen VAE; pixel space (eDiff-I, Shapes) without one
        self._frozen_vae = frozen_vae(field(m, "vae_path"), field(m, "vae"), jnp.dtype(config.compute_dtype))
        self.vae = self._frozen_vae.module if self._frozen_vae is not None else None
        self.channels = self.vae.latent_channels if self.vae is not None else 3
        super().__init__(config)
        factor = 2 ** (len(self.vae.block_out_channels) - 1) if self.vae is not None else 1
        if self.resolution % factor:
            raise ValueError(f"data.resolution {self.resolution} is not divisible by the VAE factor {factor}")
        self.sample_size = self.resolution // factor
        self.formulation = str(field(m, "formulation", "ddpm"))
        if self.formulation not in ("ddpm", "edm"):
            raise ValueError(f"model.formulation={self.formulation!r}; choose 'ddpm' or 'edm'")
        edm = as_dict(field(m, "edm", {}))
        self.edm = EDMTraining(float(edm.get("p_mean", -1.2)), float(edm.get("p_std", 1.2)),
                               float(edm.get("sigma_data", 0.5)))
        self.edm_schedule = diffusion.EDMSchedule(float(edm.get("sigma_min", 0.002)),
                                                  float(edm.get("sigma_max", 80.0)), float(edm.get("rho", 7.0)))
        ex = as_dict(field(m, "experts", {}))
        self.partition = partitions.from_config(
            ex, formulation=self.formulation, num_train_timesteps=self.schedule.num_train_timesteps,
            p_mean=self.edm.p_mean, p_std=self.edm.p_std)
        self.num_experts = self.partition.num_experts
        self.step_impl = str(ex.get("step", "vmap"))
        if self.step_impl not in ("vmap", "unrolled"):
            raise ValueError(f"model.experts.step={self.step_impl!r}; choose 'vmap' or 'unrolled'")
        self.mode = str(ex.get("mode", "vmap"))
        if self.mode not in MODES:
            raise ValueError(f"model.experts.mode={self.mode!r}; choose one of {MODES}")
        train = tuple(int(e) for e in (ex.get("train") or range(self.num_experts)))
        if not train or len(set(train)) != len(train) or min(train) < 0 or max(train) >= self.num_experts:
            raise ValueError(f"model.experts.train={list(train)} must be distinct indices in [0, {self.num_experts})")
        self.trained = tuple(sorted(train))
        sources = ex.get("sources")
        self.sources = tuple(str(x or "") for x in sources) if sources else None
        if self.sources is not None and len(self.sources) != self.num_experts:
            raise ValueError(f"model.experts.sources has {len(self.sources)} entries for {self.num_experts} experts")
        parents = ex.get("parents")
        self.parents = tuple(int(p) for p in parents) if parents else None
        if self.parents is not None and len(self.parents) != self.num_experts:
            raise ValueError(f"model.experts.parents has {len(self.parents)} entries for {self.num_experts} experts")
        if self.mode == "vmap" and int(config.batch_size) % len(self.trained):
            raise ValueError(f"batch_size={config.batch_size} must split evenly over the {len(self.trained)} trained "
                             "experts in vmap mode (each expert gets batch_size / n examples)")
        self.train_text_encoder = bool(field(m, "train_text_encoder", True))
        self.seed = int(config.seed)
        sampler = str(config.sample.get("sampler", "ddim" if self.formulation == "ddpm" else "heun"))
        allowed = ("ddim", *SIGMA_SAMPLERS) if self.formulation == "ddpm" else tuple(SIGMA_SAMPLERS)
        if sampler not in allowed:
            raise ValueError(f"sample.sampler={sampler!r} for formulation {self.formulation!r}; choose {allowed}")
        self.sampler_name = sampler
        self.stacked_unet = stack_experts(self.unet, self.num_experts)
        self.conditioner = self.make_conditioner(config)
        if self.knowledge is not None and self.knowledge.key_tokens and not isinstance(self.conditioner,
                                                                                       TextConditioner):
            raise ValueError("model.knowledge.key_tokens needs model.conditioning='text' (the multi-encoder context "
                             "is not the caption's tokens); set model.knowledge.key_tokens=False")
        for hook in ("wrap_loader", "prepare"):  # e.g. cached encoder features of the multi-encoder conditioning
            if callable(getattr(self.conditioner, hook, None)):
                setattr(self, hook, getattr(self.conditioner, hook))

    # ---------------------------------------------------------------- pieces subclasses replace

    def owns_text_encoder(self, config) -> bool:
        return str(field(config.model, "conditioning", "text")) == "text"

    def make_conditioner(self, config):
        """config.model.conditioning: "text" (`TextConditioner`) or "multi_encoder" (eDiff-I's T5 + CLIP text +
        CLIP image, `t2ijax.methods.ediffi_conditioning`)."""
        kind = str(field(config.model, "conditioning", "text"))
        if kind == "text":
            return TextConditioner(self)
        if kind == "multi_encoder":
            from t2ijax.methods.ediffi_conditioning import MultiEncoderConditioner

            return MultiEncoderConditioner(self, config)
        raise ValueError(f"model.conditioning={kind!r}; choose 'text' or 'multi_encoder'")

    def _check_channels(self, unet_cfg) -> None:
        want_in = self.channels + self.extra_in_channels
        if unet_cfg.get("in_channels") != want_in or unet_cfg.get("out_channels") != self.channels:
            space = "VAE latents have" if self.vae is not None else "pixels have"
            raise ValueError(f"{space} {self.channels} channels: model.unet.in_channels must be {want_in} "
                             f"({self.channels} + {self.extra_in_channels} conditioning) and out_channels "
                             f"{self.channels}, got {unet_cfg.get('in_channels')} and {unet_cfg.get('out_channels')}")

    # ---------------------------------------------------------------- the denoiser

    def network(self, unet_params, x, t, cond):
        """The raw U-Net F(x, t | cond) of one expert."""
        if "low_res" in cond:
            x = jnp.concatenate([x, cond["low_res"].astype(x.dtype)], axis=-1)
        kwargs = {"class_labels": cond["class_labels"]} if "class_labels" in cond else {}
        context, bias_fn = self.attention_control(cond, t, x.shape[1:3])
        return self.unet.apply({"params": unet_params}, x, t, context, attention_bias_fn=bias_fn, **kwargs)

    def denoiser(self, unet_params, x, level, cond):
        """One expert's model output at noise level `level`: D(x; sigma) (edm) or the `prediction_type`
        output at timestep t (ddpm)."""
        if self.formulation == "edm":
            if "paint" in cond:  # the network sees c_noise; paint weights need sigma itself
                cond = {**cond, "sigma": jnp.broadcast_to(jnp.asarray(level, jnp.float32), x.shape[:1])}
            return diffusion.edm_precondition(self.network, self.edm.sigma_data)(unet_params, x, level, cond)
        return self.network(unet_params, x, level, cond)

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        unet_key, cond_key = jax.random.split(rng)
        x = jnp.zeros((self.num_experts, 1, self.sample_size, self.sample_size, self.channels + self.extra_in_channels))
        cond = jax.tree.map(lambda a: jnp.broadcast_to(a, (self.num_experts,) + a.shape),
                            self.conditioner.example_cond(1))
        kwargs = {"class_labels": cond["class_labels"]} if "class_labels" in cond else {}
        unet = self.stacked_unet.init(unet_key, (x, jnp.zeros((self.num_experts, 1)), cond["context"]),
                                      kwargs)["params"]
        return {"unet": unet, **self.conditioner.init(cond_key)}

    def frozen(self, config, shard_config=None):
        from t2ijax.train.method import accepts

        takes = accepts(self.conditioner.frozen, "shard_config")  # a frozen T5-XXL goes straight onto its shards
        out = dict(self.conditioner.frozen(config, shard_config) if takes else self.conditioner.frozen(config))
        if self._frozen_vae is not None:
            out["vae"] = self._frozen_vae.params(np.random.default_rng(int(config.seed)), shard_config)
        return out

    def model_space(self, frozen, images, key):
        """x0 of the diffusion: the images, or their VAE latents."""
        from t2ijax.methods.common import vae_encode

        if self.vae is None:
            return images
        return jax.lax.stop_gradient(vae_encode(self.vae, frozen["vae"], images, key))

    def to_pixels(self, frozen):
        from t2ijax.methods.common import vae_decode

        return None if self.vae is None else (lambda x0: vae_decode(self.vae, frozen["vae"], x0))

    def _expert_loss(self, unet_params, x0, cond, levels, noise_key, weight_map=None):
        """Mean denoising loss of one expert on its micro-batch at the given noise levels."""
        if self.formulation == "edm":
            return denoising_loss(lambda x, s: self.denoiser(unet_params, x, s, cond), x0, None, noise_key,
                                  self.edm, "edm", weight_map=weight_map, levels=levels)
        return denoising_loss(lambda x, t: self.denoiser(unet_params, x, t, cond), x0, None, noise_key,
                              self.schedule, self.prediction_type, min_snr_gamma=self.min_snr_gamma,
                              weight_map=weight_map, levels=levels)

    def selected_expert(self, step):
        """Sequential modes: the expert trained at optimizer step `step` (traced int32)."""
        trained = jnp.asarray(self.trained, jnp.int32)
        if self.mode == "round_robin":
            return trained[jnp.mod(step, len(self.trained))]
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed ^ 0x5E1EC7), step)
        masses = jnp.asarray(self.partition.masses[list(self.trained)], jnp.float32)
        return trained[jax.random.categorical(key, jnp.log(masses))]

    def active_experts(self, step) -> jax.Array:
        """(num_experts,) bool: the experts an optimizer step `step` updates."""
        if self.mode == "vmap":
            return jnp.isin(jnp.arange(self.num_experts), jnp.asarray(self.trained))
        return jnp.arange(self.num_experts) == self.selected_expert(step)

    def loss(self, params, frozen, batch, rng, step=0):
        cond_key, level_key, noise_key, vae_key = jax.random.split(rng, 4)
        x0 = self.model_space(frozen, batch["image"].astype(jnp.float32), vae_key)
        b = x0.shape[0]
        cond = self.conditioner.train_cond(params, frozen, batch, cond_key)
        weight_map = batch.get("loss_weight")
        if weight_map is None and self.knowledge is not None:
            weight_map = self.knowledge.region_weights(batch, jax.random.fold_in(rng, 7), x0.shape[1:3])
        if self.mode != "vmap":
            e = self.selected_expert(step)
            levels = self.partition.sample_levels(level_key, jnp.full((b,), e))
            loss = self._expert_loss(expert_params(params["unet"], e), x0, cond, levels, noise_key, weight_map)
            return loss, {"expert": e.astype(jnp.float32)}
        n = len(self.trained)
        unet = params["unet"]
        if n < self.num_experts:  # re-train a subset: the others take no compute and no gradient
            unet = expert_params(unet, jnp.asarray(self.trained))
        lead = (n, b // n)
        ids = jnp.broadcast_to(jnp.asarray(self.trained, jnp.int32)[:, None], lead)
        levels = self.partition.sample_levels(level_key, ids)
        wm = None if weight_map is None else _tree_reshape(weight_map, lead)
        args = (unet, _tree_reshape(x0, lead), _tree_reshape(cond, lead), levels, jax.random.split(noise_key, n), wm)
        if self.step_impl == "vmap":
            losses = jax.vmap(self._expert_loss)(*args)
        else:  # the same computation expert by expert (no convolutions with batched weights)
            losses = jnp.stack([self._expert_loss(*expert_params(args, i)) for i in range(n)])
        metrics = {f"loss_expert_{e}": losses[i] for i, e in enumerate(self.trained)}
        # the sum: each expert's gradient is exactly its own micro-batch mean's, as if trained alone
        return jnp.sum(losses), {"loss_mean": jnp.mean(losses), **metrics}

    def make_optimizer(self, optim, total_steps: int):
        """AdamW from config.optim, clipped per expert; experts a step does not train are left untouched
        (sequential modes, or `experts.train` a subset); a frozen text encoder gets no updates."""
        import optax

        from t2ijax.train.optim import clip_by_expert_norm, expert_masked, make_optimizer

        def is_stacked(path) -> bool:
            return getattr(path[0], "key", None) == "unet"

        tx, schedule = make_optimizer(optim, total_steps, clip=lambda norm: clip_by_expert_norm(norm, is_stacked))
        accum = int(optim.get("grad_accum_steps", 1))
        if self.mode != "vmap" or len(self.trained) < self.num_experts:
            tx = expert_masked(tx, lambda count: self.active_experts(count // accum), is_stacked)
        if not self.train_text_encoder:
            # a label prefix tree, not a callable: optax.tree_map_params (state sharding) must be able to init it
            labels = {"unet": "train", **{k: "frozen" if k == "text_encoder" else "train"
                                          for k in self.conditioner.param_keys}}
            tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
        return tx, schedule

    def adapt_init_params(self, saved, abstract):
        """Start the experts from a parent run: a single model is copied into every expert; an ensemble is
        taken as is (same size) or by `experts.parents` (expert j <- parent expert parents[j])."""
        saved = {k: saved[k] for k in abstract if k in saved}
        unet = saved.get("unet")
        if unet is None:
            raise ValueError(f"config.init_from: the parent checkpoint has no 'unet' (it has {sorted(saved)})")
        target = jax.tree.leaves(abstract["unet"])[0].shape
        first = jax.tree.leaves(unet)[0].shape
        if first == target[1:] or (first[0] == 1 and first[1:] == target[1:] and self.parents is None):
            if first != target[1:]:  # a one-expert run (partition "single") is a single model
                unet = jax.tree.map(lambda p: np.asarray(p)[0], unet)
            unet = jax.tree.map(lambda p: np.broadcast_to(np.asarray(p), (self.num_experts,) + p.shape).copy(), unet)
        else:
            m = num_stacked(unet)
            parents = self.parents or (tuple(range(self.num_experts)) if m == self.num_experts else None)
            if parents is None:
                raise ValueError(f"config.init_from is an ensemble of {m} experts and this run has "
                                 f"{self.num_experts}: set model.experts.parents (parent expert of each expert)")
            if max(parents) >= m:
                raise ValueError(f"model.experts.parents={list(parents)} but the parent has {m} experts")
            unet = jax.tree.map(lambda p: np.asarray(p)[np.asarray(parents)], unet)
        if self.sources:  # swap in experts of other runs: "workdir" (a single model) or "workdir:index"
            unet = jax.tree.map(np.array, unet)
            for j, source in enumerate(self.sources):
                if source:
                    unet = jax.tree.map(lambda p, q, j=j: _set_row(p, j, q), unet, _expert_from(source))
        saved["unet"] = unet
        return saved

    # ---------------------------------------------------------------- sampling

    def make_sampler(self):
        if self.formulation == "ddpm":
            return super().make_sampler()
        return SIGMA_SAMPLERS[self.sampler_name](schedule=self.edm_schedule, prediction_type="sample")

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale: float | None = None, paint=None, paint_scale: float = 1.0,
               **cond_inputs) -> np.ndarray:
        """uint8 images (N, H, W, 3); each sampler step runs only the expert its noise level belongs to.
        `paint`: one `paint_with_words.Paint` (or None) per prompt, `paint_scale` its weight w'."""
        cond, uncond = self.conditioner.prompt_cond(params, frozen, prompts, **cond_inputs)
        if paint is not None:
            if not isinstance(self.conditioner, TextConditioner):
                raise ValueError("paint-with-words needs the text conditioning (model.conditioning='text'): the "
                                 "multi-encoder context mixes two token sequences and a null token")
            cond, uncond = self.paint_cond(cond, uncond, prompts, paint, paint_scale)
        return self.sample_images(self.denoiser, params["unet"], cond, uncond,
                                  (self.sample_size, self.sample_size, self.channels), seeds=seeds, rng=rng,
                                  num_steps=num_steps, guidance_scale=guidance_scale, decode=self.to_pixels(frozen),
                                  sampler=self.make_sampler(), expert_table=self.partition.table)

    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """One diffusers U-Net folder per expert (``unet_expert_<j>``), the text encoder and tokenizer, and
        ``experts.json`` (partition, intervals, masses, formulation)."""
        import json
        import os

        from t2ijax.weights import save_text_encoder, save_unet

        host = jax.device_get(params)
        os.makedirs(out_dir, exist_ok=True)
        written = []
        for j in range(self.num_experts):
            d = os.path.join(out_dir, f"unet_expert_{j}")
            save_unet(self.unet, expert_params(host["unet"], j), d)
            written.append(d)
        if "text_encoder" in host and self.text_encoder is not None:
            d = os.path.join(out_dir, "text_encoder")
            save_text_encoder(self.text_encoder, host["text_encoder"], d)
            self.tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
            written += [d, os.path.join(out_dir, "tokenizer")]
        if "conditioning" in host:  # the multi-encoder projections and null token (safetensors, flat keys)
            from safetensors.numpy import save_file

            flat = jax.tree_util.tree_flatten_with_path(host["conditioning"])[0]
            d = os.path.join(out_dir, "conditioning.safetensors")
            save_file({jax.tree_util.keystr(k, simple=True, separator="."): np.asarray(v) for k, v in flat}, d)
            written.append(d)
        meta = {"formulation": self.formulation, "partition": dataclasses.asdict(self.partition),
                "experts": self.partition.describe(), "edm": dataclasses.asdict(self.edm)}
        path = os.path.join(out_dir, "experts.json")
        with open(path, "w") as f:
            json.dump(meta, f, indent=2, default=float)
        return written + [path]


def _set_row(stacked, j, row):
    if row.shape != stacked.shape[1:]:
        raise ValueError(f"model.experts.sources: an expert of shape {row.shape} does not fit this run's "
                         f"{stacked.shape[1:]}")
    stacked[j] = row
    return stacked


def _expert_from(source: str):
    """The U-Net params of ``workdir`` (its latest checkpoint: a single model) or ``workdir:index`` (one
    expert of an ensemble run), on the host."""
    import os

    from t2ijax.train.checkpoint import Checkpointer

    path, _, index = source.rpartition(":") if source.rpartition(":")[2].isdigit() else (source, "", "")
    checkpoints = os.path.join(path, "checkpoints")
    if not os.path.isdir(checkpoints):
        raise FileNotFoundError(f"model.experts.sources entry {source!r}: no {checkpoints}")
    ckpt = Checkpointer(checkpoints, async_save=False)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"model.experts.sources entry {source!r}: no checkpoint in {checkpoints}")
        unet = ckpt.restore_params(None, step)["unet"]
    finally:
        ckpt.close()
    return jax.tree.map(lambda p: np.asarray(p)[int(index)] if index else np.asarray(p), unet)


def make_method(config) -> ExpertsMethod:
    return ExpertsMethod(config)
