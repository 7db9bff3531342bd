#!/usr/bin/env bash
# ELLA on Shapes (configs/ella_shapes.py): the commands behind experiments/ella_shapes/README.md.
# Steps are the ones measured there (stage 1 was stopped at its step-400 checkpoint).
set -euo pipefail
R=${R:-runs/ella_shapes}
T2I="python -m t2ijax"
CACHE=$R/t5_features.array_record
# Stage 1: U-Net + CLIP-style text encoder trained jointly (txt2img); frozen afterwards.
$T2I train --config=configs/ella_shapes.py:unet --workdir=$R/unet --config.total_steps=400
$T2I convert --workdir=$R/unet --out=$R/unet/export
# (a) the frozen U-Net with its own text encoder
$T2I eval --workdir=$R/unet --benchmark=shapes --num_prompts=32 --images_per_prompt=4 --out=$R/eval_a_unet
# Frozen random tiny T5 features of the train captions, computed once.
$T2I prepare --config=configs/ella_shapes.py:tsc --workdir=$R/tsc --config.model.feature_cache=$CACHE
# (b) TSC and (c) plain-LN resampler against the frozen U-Net, same budget.
for v in tsc ln; do
  $T2I train --config=configs/ella_shapes.py:$v --workdir=$R/$v --config.model.feature_cache=$CACHE \
      --config.total_steps=200 --config.checkpoint_every=100
  $T2I eval --workdir=$R/$v --benchmark=shapes --num_prompts=32 --images_per_prompt=4 --out=$R/eval_${v}_200
  $T2I train --config=configs/ella_shapes.py:$v --workdir=$R/$v --config.model.feature_cache=$CACHE \
      --config.total_steps=500 --config.checkpoint_every=100
  $T2I eval --workdir=$R/$v --benchmark=shapes --num_prompts=32 --images_per_prompt=4 --out=$R/eval_${v}_500
done
