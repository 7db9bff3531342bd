#!/usr/bin/env bash
# Expert denoisers on Shapes: the commands behind experiments/experts_shapes/README.md. From the repository root:
#   bash experiments/experts_shapes/run.sh
# Every arm = the same EDM parent (PARENT steps at batch 16) + a second stage that sees STAGE2 x 16 examples:
# one model (STAGE2 steps at 16), or N experts trained together (STAGE2 / N vmap steps at 16 per expert).
# R=run folder, N_VAL / N_TEST = prompts per split (x 4 images each).
set -euo pipefail
R=${R:-runs/experts_shapes}
PARENT=${PARENT:-1000}
STAGE2=${STAGE2:-500}
N_VAL=${N_VAL:-64}
N_TEST=${N_TEST:-100}
T2I="${PYTHON:-python} -m t2ijax"
CFG=configs/experts_shapes.py
train() {  # name, variant, steps, overrides...
  local name=$1 variant=$2 steps=$3; shift 3
  [ -f $R/$name/done ] && return
  $T2I train --config=$CFG:$variant,steps=$steps --workdir=$R/$name --config.progress=False "$@"
  touch $R/$name/done
}
# 1. the parent: one model on all noise levels (eDiff-I's step 1)
train parent parent $PARENT
# 2. the arms, all started from the parent
train single parent $STAGE2 --config.init_from=$R/parent
train ediffi2 ediffi2 $((STAGE2 / 2)) --config.init_from=$R/parent
train ediffi3 ediffi3 $((STAGE2 / 3)) --config.init_from=$R/parent
train blocks4 blocks4 $((STAGE2 / 4)) --config.init_from=$R/parent
# 3. judged on the same prompts and seeds (validation for decisions, test once)
evaluate() {  # arm, variant, split, prompts
  [ -f $R/eval_$1_$3/report.json ] && return
  $T2I eval --config=$CFG:$2 --workdir=$R/$1 --benchmark=shapes --split=$3 --num_prompts=$4 \
      --images_per_prompt=4 --out=$R/eval_$1_$3
}
for split in validation:$N_VAL test:$N_TEST; do
  for arm in single:parent ediffi2:ediffi2 ediffi3:ediffi3 blocks4:blocks4; do
    evaluate ${arm%%:*} ${arm##*:} ${split%%:*} ${split##*:}
  done
done
P=experiments/eclipse_shapes/paired.py
for split in validation test; do
  ${PYTHON:-python} $P $R/eval_ediffi2_$split $R/eval_single_$split $R/eval_ediffi3_$split $R/eval_single_$split \
      $R/eval_blocks4_$split $R/eval_single_$split --json=$R/paired_$split.json
  ${PYTHON:-python} experiments/experts_shapes/fid.py --split=$split --clip=${CLIP:-runs/clip_shapes/export/clip} \
      $R/eval_single_$split $R/eval_ediffi2_$split $R/eval_ediffi3_$split $R/eval_blocks4_$split \
      --json=$R/fid_$split.json
done
