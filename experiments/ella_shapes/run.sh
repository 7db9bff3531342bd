#!/usr/bin/env bash
# ELLA on Shapes (configs/ella_shapes.py): the commands behind experiments/ella_shapes/README.md.
# Run from the repository root: bash experiments/ella_shapes/run.sh
#   S1=short (default): stage 1 trained on short captions; S1=dense: on dense captions cut to 20 tokens.
#   R=run folder, G=guidance scale (the same for every model), N=prompts per split (x 4 images each),
#   EVAL_PREFIX=name of the eval folders (<R>/<EVAL_PREFIX>_<model>_<split>; the README's 100-prompt
#   tables: N=100 EVAL_PREFIX=eval100).
set -euo pipefail
S1=${S1:-short}
R=${R:-runs/ella_shapes_$S1}
G=${G:-1.0}
N=${N:-64}
EVAL_PREFIX=${EVAL_PREFIX:-eval}
T2I="python -m t2ijax"
CACHE=$R/t5_features.array_record
UNET="--config=configs/ella_shapes.py:variant=unet,stage1_caption=$S1"
EVAL="--benchmark=shapes --num_prompts=$N --images_per_prompt=4 --guidance_scale=$G"
evaluate() {  # name, eval flags...: both held-out splits, dense prompts unless the flags say otherwise
  local name=$1; shift
  for split in test validation; do $T2I eval $EVAL --split=$split --out=$R/${EVAL_PREFIX}_${name}_$split "$@"; done
}
# Stage 1: U-Net + CLIP-style text encoder (20-token context) trained jointly (txt2img); frozen afterwards.
$T2I train $UNET --workdir=$R/unet
$T2I convert --workdir=$R/unet --out=$R/unet/export
# (a) the frozen U-Net with its own text encoder, prompted with the dense captions (cut to its 20 tokens)
evaluate unet --workdir=$R/unet $UNET --config.data.caption=dense
# (a') reference: the same model prompted with its own training caption kind for the same scenes
[ "$S1" = dense ] || evaluate unet_own_captions --workdir=$R/unet $UNET
# Frozen random tiny T5 features of the dense train captions (all 80 tokens), computed once.
$T2I prepare --config=configs/ella_shapes.py:variant=tsc,unet_path=$R/unet/export/unet --workdir=$R/tsc \
    --config.model.feature_cache=$CACHE
# (b) TSC and (c) plain-LN resampler against the frozen U-Net, same budget.
for v in tsc ln; do
  $T2I train --config=configs/ella_shapes.py:variant=$v,unet_path=$R/unet/export/unet --workdir=$R/$v \
      --config.model.feature_cache=$CACHE
  evaluate $v --workdir=$R/$v
done
