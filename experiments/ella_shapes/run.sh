#!/usr/bin/env bash
# ELLA on Shapes (configs/ella_shapes.py): the commands behind experiments/ella_shapes/README.md.
# Run from the repository root: bash experiments/ella_shapes/run.sh  (R=... G=... N=... to change them)
set -euo pipefail
R=${R:-runs/ella_shapes}          # run folder
G=${G:-1.0}                       # guidance scale, the same for every model
N=${N:-64}                        # prompts scored per split (x 4 images each)
T2I="python -m t2ijax"
CACHE=$R/t5_features.array_record
EVAL="--benchmark=shapes --num_prompts=$N --images_per_prompt=4 --guidance_scale=$G"
evaluate() {  # workdir, name: both held-out splits
  for split in test validation; do $T2I eval --workdir=$1 $EVAL --split=$split --out=$R/eval_$2_$split; done
}
# Stage 1: U-Net + CLIP-style text encoder (20-token context) trained jointly (txt2img); frozen afterwards.
$T2I train --config=configs/ella_shapes.py:unet --workdir=$R/unet
$T2I convert --workdir=$R/unet --out=$R/unet/export
# (a) the frozen U-Net with its own text encoder
evaluate $R/unet unet
# Frozen random tiny T5 features of the train captions (all 80 tokens), computed once.
$T2I prepare --config=configs/ella_shapes.py:variant=tsc,unet_path=$R/unet/export/unet --workdir=$R/tsc --config.model.feature_cache=$CACHE
# (b) TSC and (c) plain-LN resampler against the frozen U-Net, same budget.
for v in tsc ln; do
  $T2I train --config=configs/ella_shapes.py:variant=$v,unet_path=$R/unet/export/unet --workdir=$R/$v --config.model.feature_cache=$CACHE
  evaluate $R/$v $v
done
