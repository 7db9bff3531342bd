#!/usr/bin/env bash
# The Shapes cascade (32 px base -> SR 32 -> 64) against a single 64 px model trained for the same total steps:
# the commands behind experiments/cascade_shapes/README.md. From the repository root:
#   bash experiments/cascade_shapes/run.sh
# R=run folder, BASE=the 32 px base workdir (runs/experts_shapes/parent when it exists: the EDM parent of the experts
# experiment, 1,000 steps; otherwise trained here with BASE_STEPS), SR_STEPS=SR training steps, SINGLE=1 to also
# train and judge the 64 px single model (BASE_STEPS + SR_STEPS steps; ~2 s a step on a shared 2-core CPU),
# SPLIT / N = judged split and prompts (x 4 images each).
set -euo pipefail
R=${R:-runs/cascade_shapes}
BASE=${BASE:-runs/experts_shapes/parent}
BASE_STEPS=${BASE_STEPS:-1000}
SR_STEPS=${SR_STEPS:-400}
SINGLE=${SINGLE:-1}
SPLIT=${SPLIT:-test}
N=${N:-32}
T2I="${PYTHON:-python} -m t2ijax"
EVAL="--benchmark=shapes --split=$SPLIT --num_prompts=$N --images_per_prompt=4"
# 1. Shapes at 64 px (the SR stage's and the single model's training data, and every judged scene)
$T2I prepare --config=configs/sr_shapes.py
# 2. the 32 px base
if [ ! -d $BASE/checkpoints ]; then
  BASE=$R/base
  [ -f $BASE/done ] || { $T2I prepare --config=configs/experts_shapes.py:parent
    $T2I train --config=configs/experts_shapes.py:parent,steps=$BASE_STEPS --workdir=$BASE --config.progress=False
    touch $BASE/done; }
fi
# 3. the SR stage, 32 -> 64 (text-conditioned, noise-conditioning augmentation)
[ -f $R/sr/done ] || { $T2I train --config=configs/sr_shapes.py:cpu,steps=$SR_STEPS --workdir=$R/sr \
    --config.checkpoint_every=$SR_STEPS --config.progress=False; touch $R/sr/done; }
# 4. the cascade, judged at 64 px; the base bilinearly upsampled as a reference (what SR adds over interpolation)
[ -f $R/eval_cascade_$SPLIT/report.json ] || $T2I eval --config=configs/cascade_shapes.py:base=$BASE,sr=$R/sr \
    $EVAL --out=$R/eval_cascade_$SPLIT
[ -f $R/eval_upsampled_$SPLIT/report.json ] || ${PYTHON:-python} experiments/cascade_shapes/upsampled_base.py \
    --workdir=$BASE --split=$SPLIT --num_prompts=$N --out=$R/eval_upsampled_$SPLIT
P=experiments/eclipse_shapes/paired.py
PAIRS="$R/eval_cascade_$SPLIT $R/eval_upsampled_$SPLIT"
# 5. the 64 px single model, same total steps (base + SR), same U-Net body as the SR stage
if [ "$SINGLE" = 1 ]; then
  [ -f $R/single64/done ] || { $T2I train --config=experiments/cascade_shapes/single64.py:steps=$((BASE_STEPS + SR_STEPS)) \
      --workdir=$R/single64 --config.checkpoint_every=200 --config.progress=False
    touch $R/single64/done; }
  [ -f $R/eval_single64_$SPLIT/report.json ] || $T2I eval --workdir=$R/single64 $EVAL --out=$R/eval_single64_$SPLIT
  PAIRS="$R/eval_cascade_$SPLIT $R/eval_single64_$SPLIT $PAIRS"
fi
# 6. paired per-prompt differences (same prompts and seeds), mean +- standard error
${PYTHON:-python} $P $PAIRS --json=$R/paired_$SPLIT.json
