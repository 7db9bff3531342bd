"""The Shapes cascade: a 32 px text-to-image base, then text-conditioned super-resolution 32 -> 64.

Inference only (``method = "cascade"``, `t2ijax.methods.cascade`): ``t2ijax sample`` / ``t2ijax eval`` load each
stage from its own workdir (its saved config.json and latest checkpoint, EMA params, as ``t2ijax sample
--workdir`` does) and run base -> SR, each stage with its own steps, guidance and (SR) noise-augmentation level.

Arguments (``:key=value,...``):
  base     workdir of the 32 px base (default runs/experts_shapes/parent: configs/experts_shapes.py:parent, the
           EDM model of the experts experiment; any method with sample() works)
  sr       workdir of the SR stage (default runs/cascade_shapes/sr: configs/sr_shapes.py)
  variant  "cpu" (default: the workdirs above) or "tiny" (random tiny stages, demo_shapes:tiny -> sr_shapes:tiny,
           for smoke runs and tests: no checkpoints needed)

Stage fields (override with --config.stages.<base|sr>.<field>=...): config ("" = the workdir's config.json, or a
"path.py:arg" spec), workdir, overrides, num_steps (0 = the stage config's), guidance_scale (< 0 = the stage
config's), aug_level (SR, < 0 = the stage config's sample.noise_aug_level), random_init, ema.
``data`` is the 64 px Shapes data: `t2ijax eval` draws its prompts and judges its scenes at the final resolution.

Launch:
  t2ijax sample --config=configs/cascade_shapes.py --out=grid.png \\
      --prompt="a large red circle above a small blue square"
  t2ijax eval --config=configs/cascade_shapes.py --benchmark=shapes --split=validation --num_prompts=32 \\
      --out=runs/cascade_shapes/eval_cascade_validation
  t2ijax sample --config=configs/cascade_shapes.py:variant=tiny --out=grid.png --prompt="a red circle"
"""

import os

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

sr_shapes = import_sibling(__file__, "sr_shapes")
HERE = os.path.dirname(os.path.abspath(__file__))


def stage(workdir: str = "", config: str = "", *, random_init: bool = False, num_steps: int = 0,
          guidance_scale: float = -1.0, aug_level: float = -1.0) -> dict:
    return dict(config=config, workdir=workdir, overrides=(), num_steps=num_steps, guidance_scale=guidance_scale,
                aug_level=aug_level, random_init=random_init, ema=True)


def get_config(arg=None):
    arg = parse_arg(arg, variant="cpu", base="runs/experts_shapes/parent", sr="runs/cascade_shapes/sr")
    if arg.variant not in ("cpu", "tiny"):
        raise ValueError(f"cascade_shapes variant {arg.variant!r}; choose 'cpu' or 'tiny'")
    tiny = arg.variant == "tiny"
    c = ml_collections.ConfigDict()
    c.method = "cascade"
    c.seed = 0
    c.workdir = "runs/cascade_shapes/cascade_tiny" if tiny else "runs/cascade_shapes/cascade"  # eval's default out
    c.order = ("base", "sr")
    if tiny:
        c.stages = ml_collections.ConfigDict(dict(
            base=stage(config=os.path.join(HERE, "demo_shapes.py") + ":tiny", random_init=True),
            sr=stage(config=os.path.join(HERE, "sr_shapes.py") + ":tiny", random_init=True)))
    else:
        c.stages = ml_collections.ConfigDict(dict(base=stage(arg.base), sr=stage(arg.sr)))
    c.data = sr_shapes.data_config(tiny)
    return c
