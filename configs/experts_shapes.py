"""Expert denoisers on Shapes 32x32: eDiff-I's expert tree and ERNIE-style equal blocks (issue 14 experiment).

The U-Net, text encoder and data are the CPU demo's (configs/demo_shapes.py): a 1.03M-param pixel-space U-Net
with attention at 8x8 and a 1-layer text encoder trained with it. Variants (``:variant,key=value``):

  parent     one EDM model on all noise levels (eDiff-I step 1); also the single-model baseline
  ediffi2    2 experts, the median split of p(sigma) (eDiff-I E(1,0) + E(1,1)), init from the parent
  ediffi3    3 experts, Config D: E(9,511) + E(3,0) + the rest, init from the parent
  blocks4    4 equal-probability sigma blocks (ERNIE's equal blocks, on the EDM axis), init from the parent
  ernie4     ERNIE's DDPM variant: 4 equal timestep blocks (needs a DDPM parent: parent_ddpm)
  parent_ddpm  the DDPM (cosine schedule, x0 prediction) parent of ernie4
  tiny       a few steps of ediffi3 at the demo's tiny size (tests, smoke runs)

Options: steps=<int> (training steps of this stage), mode=vmap|round_robin|by_mass, step=unrolled|vmap (how the
one-step-for-all-experts mode computes them), sampler=heun|euler|dpm.

Launch (see experiments/experts_shapes/run.sh):
  t2ijax train --config=configs/experts_shapes.py:parent,steps=1000 --workdir=runs/experts_shapes/parent
  t2ijax train --config=configs/experts_shapes.py:ediffi3,steps=500 --workdir=runs/experts_shapes/ediffi3 \\
      --config.init_from=runs/experts_shapes/parent
  t2ijax eval --config=configs/experts_shapes.py:ediffi3 --workdir=runs/experts_shapes/ediffi3 --split=validation
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")
demo = import_sibling(__file__, "demo_shapes")

VARIANTS = ("parent", "ediffi2", "ediffi3", "blocks4", "ernie4", "parent_ddpm", "tiny")


def experts_config(variant: str) -> dict:
    if variant in ("parent", "parent_ddpm"):
        return dict(partition="single")
    if variant == "ediffi2":
        return dict(partition="ediffi_tree", nodes=((1, 0), (1, 1)))
    if variant in ("ediffi3", "tiny"):
        return dict(partition="ediffi_tree", nodes=((9, 511), (3, 0)))
    if variant == "blocks4":
        return dict(partition="equal_mass", num_experts=4)
    return dict(partition="ernie", num_experts=4)


def get_config(arg=None):
    arg = parse_arg(arg, variant="parent", steps=0, mode="vmap", step="unrolled", sampler="heun")
    if arg.variant not in VARIANTS:
        raise ValueError(f"experts_shapes variant {arg.variant!r}; choose one of {VARIANTS}")
    tiny = arg.variant == "tiny"
    c = demo.get_config("tiny" if tiny else "cpu")
    del c.demo
    c.method = "experts"
    c.total_steps = int(arg.steps) or (4 if tiny else 1000)
    c.checkpoint_every = c.total_steps if tiny else 500
    c.optim.warmup_steps = 1 if tiny else 50
    ddpm = arg.variant in ("ernie4", "parent_ddpm")
    c.model.formulation = "ddpm" if ddpm else "edm"
    # eDiff-I's constants (methods.md 5.1); sigma_max 80 / sigma_min 0.002 are EDM's defaults (not stated by eDiff-I)
    c.model.edm = dict(p_mean=-1.2, p_std=1.2, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    # "unrolled": the vmap step's numbers computed expert by expert; on this 2-core CPU the vmapped step ran
    # 0.21 steps/s at batch 32 (2 experts) against 1.1-2.3 steps/s of one model at batch 16 (2026-12-02)
    c.model.experts = ml_collections.ConfigDict(dict(mode=arg.mode, step=arg.step, **experts_config(arg.variant)))
    c.model.train_text_encoder = True
    # vmap mode gives each expert its own micro-batch of the parent's size: one step of n experts costs n steps
    num_experts = {"parent": 1, "parent_ddpm": 1, "ediffi2": 2, "ediffi3": 3, "tiny": 3}.get(arg.variant, 4)
    per_expert = 2 if tiny else c.batch_size
    c.batch_size = per_expert * (num_experts if arg.mode == "vmap" else 1)
    c.sample.sampler = "ddim" if ddpm else arg.sampler
    c.sample.num_steps = 1 if tiny else (20 if ddpm else 12)  # Heun 12 steps = 23 evaluations
    return c
