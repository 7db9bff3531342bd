"""Inference: load a method's params (latest checkpoint of a workdir, EMA by default, or random) and sample.

    method, params, frozen, _ = load_for_inference(config, workdir)
    sampler = make_sampler(method, params, frozen)          # sampler(prompts, seeds) -> uint8 images
    images = sampler(["a red circle", "a blue square"], [7, 8])

Seeds: image i's initial noise is ``normal(PRNGKey(seeds[i]), (H, W, C))`` (`initial_noise`), a function of
its own seed only, and the samplers are deterministic (DDIM, eta 0), so the seed recorded for an image (eval
reports, images.npz, ``t2ijax sample``'s JSON) regenerates it in a batch of any size or composition, up to
rounding (`regenerated_matches`). ``t2ijax sample``, ``t2ijax eval`` and the demo all sample through
`make_sampler`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2ijax import sharding as shd
from t2ijax.methods import get_method
from t2ijax.train.checkpoint import Checkpointer
from t2ijax.train.method import check_method, frozen_models, trainable_item


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved as ``<workdir>/config.json``."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass --config, or a workdir written by `t2ijax train`")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_for_inference(config, workdir: str | None = None, *, random_init: bool = False, ema: bool = True,
                       step: int | None = None, devices=None):
    """(method, params, frozen, shard_config). Params come from the latest (or `step`) checkpoint of
    `workdir`, using the EMA copy when `ema` and the checkpoint has one; with `random_init`, from
    ``config.init_from`` when set (a workdir, or a file the method's ``load_init`` reads), else a fresh init."""
    shard_config = shd.ShardConfig.from_config(config, devices=devices)
    method = get_method(config.method, config)
    check_method(method, config.method)
    init_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))[0]
    with shard_config.active():
        if random_init:  # no checkpoint: a fresh init, or the weights config.init_from names (e.g. an adapter file)
            if config.get("init_from"):
                from t2ijax.train.loop import params_from_init

                abstract, specs = shd.abstract_with_specs(lambda r: method.init(r, config), init_key)
                shardings = shard_config.tree_shardings(specs, abstract)
                params = params_from_init(config, method, shd.with_shardings(abstract, shardings), shardings)
            else:
                params, _, _ = shd.init_sharded(lambda r: method.init(r, config), init_key, shard_config)
        else:
            if workdir is None:
                raise ValueError("give a workdir with checkpoints, or random_init=True")
            abstract, specs = shd.abstract_with_specs(lambda r: method.init(r, config), init_key)
            target = shd.with_shardings(abstract, shard_config.tree_shardings(specs, abstract))
            ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), trainable_item=trainable_item(method))
            step = newest_intact_step(ckpt) if step is None else step
            use_ema = ema and "ema" in ckpt.saved_items(step)
            params = ckpt.restore_params(target, step, ema=use_ema)
            ckpt.close()
        frozen, _ = shd.place(frozen_models(method, config, shard_config, training=False), shard_config)
    return method, params, frozen, shard_config


def newest_intact_step(ckpt: Checkpointer) -> int:
    """The newest checkpoint step whose files match their manifest; a damaged newer one is skipped with a warning
    naming it (read-only: nothing is moved; a resuming `train` moves it aside)."""
    steps = sorted(ckpt.all_steps(), reverse=True)
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {ckpt.directory}; train first or use random_init")
    for step in steps:
        why = ckpt.damage(step)
        if why is None:
            return step
        print(f"[t2ijax] WARNING: checkpoint step {step} in {ckpt.directory} is damaged ({why}); using an earlier "
              "one", flush=True)
    raise FileNotFoundError(f"every checkpoint under {ckpt.directory} is damaged (files differ from their manifests)")


def initial_noise(num: int, shape: Sequence[int], *, seeds: Sequence[int] | None = None, rng=None) -> jax.Array:
    """x_T (num, *shape), standard normal, from `seeds` (one int per image) or `rng` (one key per batch).

    With `seeds` (the primary form) row i is ``normal(PRNGKey(seeds[i]), shape)``: it depends on its own
    seed only, never on the batch around it, so a recorded seed regenerates its image. With `rng` the rows
    are drawn together, so each depends on the key, its row index and the batch size.
    """
    shape = tuple(int(d) for d in shape)
    if (seeds is None) == (rng is None):
        raise ValueError("give exactly one of seeds (one int per image) or rng (one key for the batch)")
    if rng is not None:
        return jax.random.normal(rng, (num, *shape))
    if len(seeds) != num:
        raise ValueError(f"{len(seeds)} seeds for {num} images: give one seed per image")
    return jnp.stack([jax.random.normal(jax.random.PRNGKey(int(s)), shape) for s in seeds])


def sampling_settings(method, num_steps: int | None = None, guidance_scale: float | None = None) -> dict:
    """{"num_steps", "guidance_scale"}: the given values, else the method's defaults (its `sample_steps` and
    `guidance_scale`, from config.sample). The one place sampling defaults are resolved: the methods'
    `sample` (`t2ijax.methods.common.DiffusionMethod.sample_images`) and `make_sampler`'s reports."""
    return {"num_steps": num_steps or getattr(method, "sample_steps", None),
            "guidance_scale": getattr(method, "guidance_scale", None) if guidance_scale is None else guidance_scale}


def make_sampler(method, params, frozen, *, num_steps: int | None = None, guidance_scale: float | None = None,
                 unconditional: bool = False, paint=None, paint_scale: float = 1.0):
    """``sampler(prompts, seeds) -> uint8 images (N, H, W, 3)``, image i from seed i (`initial_noise`).

    The one adaptor from ``method.sample`` to the form `t2ijax.eval.evaluate` and ``t2ijax sample`` call.
    `unconditional`: the empty caption (the caption-dropout null input) for every prompt and guidance 1,
    so classifier-free guidance reduces to the empty-caption prediction; the seeds, hence the initial
    noise, stay those of the prompts. ``sampler.settings`` holds the settings, for reports.
    `paint`: one `t2ijax.methods.paint_with_words.Paint` for every prompt (paint-with-words, weight
    `paint_scale`); the method must take ``paint=`` (txt2img, experts).
    """
    if not callable(getattr(method, "sample", None)):
        raise ValueError(f"{type(method).__name__} has no sample(params, frozen, prompts, seeds=...)")
    if unconditional and guidance_scale not in (None, 1.0):
        raise ValueError(f"an unconditional sampler uses guidance_scale 1, got {guidance_scale}")
    scale = 1.0 if unconditional else guidance_scale

    def sampler(prompts, seeds):
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per image")
        text = [""] * len(prompts) if unconditional else prompts
        extra = {} if paint is None else {"paint": [paint] * len(prompts), "paint_scale": paint_scale}
        return method.sample(params, frozen, text, seeds=seeds, num_steps=num_steps, guidance_scale=scale, **extra)

    if paint is not None:
        if unconditional:
            raise ValueError("an unconditional sampler cannot paint: the empty caption has no phrases")
        import inspect

        if "paint" not in inspect.signature(method.sample).parameters:
            raise ValueError(f"{type(method).__name__} does not support paint-with-words (txt2img and experts do)")
    sampler.settings = {**sampling_settings(method, num_steps, scale), "unconditional": unconditional}
    if paint is not None:
        sampler.settings["paint"] = {"phrases": list(paint.phrases), "strengths": list(paint.strengths),
                                     "scale": paint_scale}
    return sampler


def regenerated_matches(image, regenerated, *, max_fraction: float = 0.01) -> bool:
    """Whether `regenerated` (same prompt, seed and settings, sampled again) is `image` as promised: uint8
    values equal, or off by 1 on at most `max_fraction` of them.

    Every image is computed independently of the others in its batch, but a batch of another size changes
    how XLA blocks its matmuls and convolutions, hence the last float bits, which can flip the rounding of a
    few values. Measured on the demo's U-Net after 400 training steps (2-core CPU, 20 DDIM steps, 64 images of
    32x32 sampled in batches of 32): regenerated alone, in batches of 16 or in shuffled batches of 5, 56-60 of
    the 64 images were bit-identical and the others differed by 1 in 1 or 2 of their 3,072 values.
    """
    a, b = np.asarray(image, np.int32), np.asarray(regenerated, np.int32)
    if a.shape != b.shape:
        return False
    diff = np.abs(a - b)
    return bool(diff.max(initial=0) <= 1 and np.mean(diff > 0) <= max_fraction)
