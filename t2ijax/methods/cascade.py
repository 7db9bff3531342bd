"""A pixel cascade (eDiff-I, Imagen): a base text-to-image stage, then super-resolution stages.

    cascade = load_cascade([dict(config="configs/experts_shapes.py:parent", workdir="runs/experts_shapes/parent"),
                            dict(workdir="runs/cascade_shapes/sr", aug_level=0.1)])
    images = cascade.sample(["a large red circle"], seeds=[0])     # uint8 (1, 64, 64, 3)
    sampler = cascade.sampler()                                    # sampler(prompts, seeds), with .settings

Stage 0 is any method with ``sample(params, frozen, prompts, seeds=...)`` (txt2img, experts, ...); every later
stage is a `t2ijax.methods.super_resolution.SuperResolutionMethod` whose ``model.low_res.resolution`` equals the
previous stage's output resolution. Each stage samples with its own steps, guidance scale and (SR) noise
augmentation level; None takes that stage's config.sample. The previous stage's uint8 output is the next stage's
``low_res`` input (what a cascade that stores its intermediate images sees).

Seeds: image i of stage 0 starts from seed s_i, as every `t2ijax.train.sampling.make_sampler` sampler; stage k > 0
uses `stage_seed(s_i, k)` for its initial noise and its augmentation noise, so a (prompt, seed) pair regenerates
the whole cascade and no two stages share noise.

A stage spec (`load_cascade`) is a dict (or ConfigDict): ``config`` (a config spec "path.py:arg", a ConfigDict,
or "" / None: the config saved in ``<workdir>/config.json``, as ``t2ijax sample --workdir`` does), ``workdir``
(its checkpoints; the latest step, EMA params when present, through `t2ijax.train.sampling.load_for_inference`,
the path ``t2ijax sample`` loads with), ``overrides`` (dotted config overrides), ``num_steps``,
``guidance_scale``, ``aug_level`` (SR stages; for these three None, num_steps 0 or a negative value means "the
stage config's config.sample"), ``random_init`` (smoke runs), ``ema``, ``name``.

``config.method = "cascade"`` (configs/cascade_shapes.py) makes the CLI's ``sample`` / ``eval`` build a cascade
from ``config.stages`` (``cascade_config_stages``); `make_method` refuses to train one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

STAGE_KEYS = ("name", "config", "workdir", "overrides", "num_steps", "guidance_scale", "aug_level", "random_init",
              "ema")
SEED_MOD = 2 ** 31 - 1


def stage_seed(seed: int, stage: int) -> int:
    """The seed of stage `stage` for an image of seed `seed` (stage 0: the seed itself)."""
    if stage == 0:
        return int(seed)
    return int((int(seed) * 1_000_003 + stage * 0x9E3779B1) % SEED_MOD)


@dataclasses.dataclass
class Stage:
    """One loaded stage: its method, params, frozen inputs and sampling settings (None: its config's)."""

    method: Any
    params: Any
    frozen: Any
    num_steps: int | None = None
    guidance_scale: float | None = None
    aug_level: float | None = None
    name: str = ""

    @property
    def is_super_resolution(self) -> bool:
        return int(getattr(self.method, "extra_in_channels", 0)) > 0 and hasattr(self.method, "low_resolution")

    @property
    def resolution(self) -> int:
        return int(self.method.resolution)

    def settings(self) -> dict:
        from t2ijax.train.sampling import sampling_settings

        out = {"name": self.name, "method": type(self.method).__name__, "resolution": self.resolution,
               **sampling_settings(self.method, self.num_steps, self.guidance_scale)}
        if self.is_super_resolution:
            out["low_resolution"] = int(self.method.low_resolution)
            out["aug_level"] = float(self.method.aug_level if self.aug_level is None else self.aug_level)
        return out


class Cascade:
    """Base stage -> SR stage(s). `sample(prompts, seeds)` -> uint8 (N, H, W, 3) at the last stage's resolution."""

    def __init__(self, stages):
        self.stages = list(stages)
        if not self.stages:
            raise ValueError("a cascade needs at least one stage")
        if self.stages[0].is_super_resolution:
            raise ValueError(f"stage 0 ({self.stages[0].name}) is a super-resolution stage: the first stage must "
                             "generate from text alone")
        for k, stage in enumerate(self.stages):
            if not callable(getattr(stage.method, "sample", None)):
                raise ValueError(f"stage {k} ({stage.name}): {type(stage.method).__name__} has no sample()")
            if k == 0:
                continue
            if not stage.is_super_resolution:
                raise ValueError(f"stage {k} ({stage.name}) is {type(stage.method).__name__}, not a super-resolution "
                                 "stage: every stage after the first upsamples the previous one")
            prev = self.stages[k - 1].resolution
            if int(stage.method.low_resolution) != prev:
                raise ValueError(f"stage {k} ({stage.name}) upsamples {stage.method.low_resolution}px images but "
                                 f"stage {k - 1} ({self.stages[k - 1].name}) makes {prev}px ones")

    @property
    def resolution(self) -> int:
        return self.stages[-1].resolution

    @property
    def settings(self) -> dict:
        return {"cascade": [s.settings() for s in self.stages]}

    def sample(self, prompts, seeds, *, return_all: bool = False):
        """uint8 images of the last stage (or, with `return_all`, the list of every stage's images)."""
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per image")
        outputs = []
        images = None
        for k, stage in enumerate(self.stages):
            stage_seeds = [stage_seed(s, k) for s in seeds]
            kwargs = dict(seeds=stage_seeds, num_steps=stage.num_steps, guidance_scale=stage.guidance_scale)
            if k:
                kwargs.update(low_res=images, aug_level=stage.aug_level)
            images = np.asarray(stage.method.sample(stage.params, stage.frozen, prompts, **kwargs))
            outputs.append(images)
        return outputs if return_all else images

    def sampler(self):
        """``sampler(prompts, seeds) -> uint8 images`` with ``.settings``: the form `t2ijax.eval.evaluate` and
        ``t2ijax sample`` call (as `t2ijax.train.sampling.make_sampler`)."""

        def sampler(prompts, seeds):
            return self.sample(prompts, seeds)

        sampler.settings = self.settings
        return sampler


def _spec_dict(spec) -> dict:
    spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    unknown = sorted(set(spec) - set(STAGE_KEYS))
    if unknown:
        raise ValueError(f"unknown cascade stage fields {unknown}; known: {list(STAGE_KEYS)}")
    return spec


def stage_config(spec: dict):
    """The config of a stage spec: its ``config`` (spec string or ConfigDict) or its workdir's config.json, with
    ``overrides`` applied."""
    import ml_collections

    from t2ijax.config_utils import load_config, set_by_path
    from t2ijax.train.sampling import config_from_workdir

    config, overrides = spec.get("config"), list(spec.get("overrides") or ())
    if isinstance(config, str) and config:
        return load_config(config, overrides)
    if config:
        config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    elif spec.get("workdir"):
        config = config_from_workdir(spec["workdir"])
    else:
        raise ValueError(f"cascade stage {spec.get('name', '')!r} needs a config or a workdir holding config.json")
    for item in overrides:
        key, _, value = item.partition("=")
        set_by_path(config, key, value)
    return config


def load_stage(spec, *, random_init: bool | None = None, ema: bool | None = None, index: int = 0) -> Stage:
    """A `Stage` from a spec (module docstring); `random_init` / `ema` given here override the spec's."""
    from t2ijax.train.sampling import load_for_inference

    spec = _spec_dict(spec)
    config = stage_config(spec)
    rand = bool(spec.get("random_init", False)) if random_init is None else bool(random_init)
    use_ema = bool(spec.get("ema", True)) if ema is None else bool(ema)
    workdir = spec.get("workdir") or None
    if not rand and not workdir:
        raise ValueError(f"cascade stage {index} ({spec.get('name', '')!r}) needs a workdir with checkpoints "
                         "(or random_init)")
    method, params, frozen, _ = load_for_inference(config, None if rand else workdir, random_init=rand, ema=use_ema)

    def opt(name, cast):  # None, "", or a sentinel (num_steps 0, a negative scale or level): the stage config's
        value = spec.get(name)
        if value is None or value == "" or (name == "num_steps" and int(value) == 0) or cast(value) < 0:
            return None
        return cast(value)

    return Stage(method, params, frozen, num_steps=opt("num_steps", int), guidance_scale=opt("guidance_scale", float),
                 aug_level=opt("aug_level", float), name=str(spec.get("name") or f"stage{index}"))


def load_cascade(specs, *, random_init: bool | None = None, ema: bool | None = None) -> Cascade:
    """A `Cascade` from stage specs, base first (module docstring)."""
    return Cascade([load_stage(s, random_init=random_init, ema=ema, index=k) for k, s in enumerate(specs)])


def cascade_config_stages(config) -> list[dict]:
    """The ordered stage specs of a ``method = "cascade"`` config: ``config.stages.<name>`` in the order of
    ``config.order`` (names), each with its name filled in."""
    order = list(config.order)
    stages = config.stages
    missing = [n for n in order if n not in stages]
    if missing:
        raise ValueError(f"cascade config: config.order names stages {missing} that config.stages lacks "
                         f"({sorted(stages)})")
    out = []
    for name in order:
        spec = _spec_dict(stages[name])
        spec["name"] = spec.get("name") or name
        out.append(spec)
    return out


def load_cascade_from_config(config, *, random_init: bool = False, ema: bool = True) -> Cascade:
    """The cascade a ``method = "cascade"`` config describes; `random_init` makes every stage random."""
    return load_cascade(cascade_config_stages(config), random_init=True if random_init else None,
                        ema=None if ema else False)


def make_method(config):
    raise ValueError("method 'cascade' is inference only: train each stage with its own config (e.g. "
                     "configs/experts_shapes.py and configs/sr_shapes.py), then sample / eval the cascade with "
                     "configs/cascade_shapes.py")
