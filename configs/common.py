"""Shared config pieces: mesh presets, logical-axis rules, optimizer and runtime defaults.

Config files import this with ``common = t2ijax.config_utils.import_sibling(__file__, "common")``.
"""

import ml_collections

# Mesh presets: sizes per mesh axis, -1 fills the remaining devices.
MESH_PRESETS = {
    "data": {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1},         # pure data parallel
    "fsdp": {"data": 1, "fsdp": -1, "tensor": 1, "expert": 1},         # ZeRO-3-style sharded params
    "data_fsdp8": {"data": -1, "fsdp": 8, "tensor": 1, "expert": 1},   # FSDP within an 8-chip host, DP across
    "tensor": {"data": -1, "fsdp": 1, "tensor": 4, "expert": 1},       # data x 4-way tensor parallel
}

# Logical axis -> mesh axes (maxdiffusion-style). Logical names absent here are replicated.
LOGICAL_AXIS_RULES = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "vocab": "tensor",
    "conv_in": None,
    "conv_out": "fsdp",
    "norm": None,
    "relpos": None,
    "latents": None,
    "expert": "expert",   # stacked expert U-Nets (t2ijax.models.experts): one expert group per mesh slice
}


# Stable Diffusion 1.x's DDPM schedule (diffusers' scheduler_config of SD1.5)
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def optim_defaults(**overrides) -> ml_collections.ConfigDict:
    c = dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, schedule="constant",
             warmup_steps=0, decay_steps=0, end_lr_factor=0.0, grad_clip_norm=1.0, grad_accum_steps=1)
    c.update(overrides)
    return ml_collections.ConfigDict(c)


def runtime_defaults(**overrides) -> ml_collections.ConfigDict:
    """Fields every train config has (see t2ijax/train/loop.py)."""
    c = ml_collections.ConfigDict()
    c.method = ""
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 64                  # global batch (all processes)
    c.compute_dtype = "bfloat16"      # activations / matmuls; params stay float32
    c.ema_decay = 0.9999               # 0 disables EMA
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_last = 3                    # most recent checkpoints kept
    c.keep_period = 0                  # also keep every step divisible by this (0: none)
    c.async_checkpointing = True
    c.checkpoint_digest = "sha256"     # manifest of each saved step: "sha256" (detects any change) | "size"
                                       # (cuts only; no re-read of the files: for multi-GB states)
    c.prefetch = 2                     # batches read + transferred ahead in a background thread (0: inline)
    c.resume = True                    # resume from the latest checkpoint of the workdir
    c.resume_data = True               # ... and the data position (False: the data order restarts, e.g. a
                                       # sharded dataset resumed with another number of processes)
    c.init_from = ""                   # start the trainable params from a workdir or an upstream folder/file
    c.init_from_ema = False            # with a workdir: take its EMA params instead of the raw ones
    c.tensorboard = True
    c.progress = True
    c.nonfinite = "skip"               # a non-finite loss/gradient: "skip" the update (counted in nonfinite_steps)
                                       # or "stop" naming the step and the batch's example ids
    c.compilation_cache_dir = ""       # persistent XLA compilation cache ("" disables)
    c.peak_tflops_per_device = 0.0    # > 0 overrides the device table used for MFU
    c.mesh = dict(MESH_PRESETS["data"])
    c.mesh_axis_types = "auto"         # "auto" | "explicit" (jax.sharding.AxisType)
    c.logical_axis_rules = dict(LOGICAL_AXIS_RULES)
    c.optim = optim_defaults()
    for k, v in overrides.items():
        c[k] = v
    return c


def synthetic_data(**overrides) -> ml_collections.ConfigDict:
    c = dict(name="synthetic", resolution=8, max_length=8, vocab_size=32, seed=0)
    c.update(overrides)
    return ml_collections.ConfigDict(c)


def toy_config(**overrides) -> ml_collections.ConfigDict:
    """The toy MLP denoiser (t2ijax/methods/toy.py) on synthetic data: tests, benchmarks, smoke runs."""
    c = runtime_defaults(method="toy", total_steps=10, batch_size=8, compute_dtype="float32", ema_decay=0.9,
                         log_every=2, checkpoint_every=5)
    c.data = synthetic_data(resolution=8, max_length=8, vocab_size=32)
    # teacher_hidden > 0 adds a frozen teacher denoiser of that width (exercises frozen placement)
    c.model = ml_collections.ConfigDict(dict(width=16, hidden=32, depth=1, teacher_hidden=0))
    for k, v in overrides.items():
        c[k] = v
    return c
