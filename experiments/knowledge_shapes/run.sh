#!/usr/bin/env bash
# ERNIE-ViLG 2.0 knowledge-enhanced training on Shapes: the commands behind experiments/knowledge_shapes/README.md.
# From the repository root:  bash experiments/knowledge_shapes/run.sh
# Every arm trains STEPS steps at batch 16 from the same init and data order (configs/knowledge_shapes.py); the
# arms are judged on the same prompts and seeds (validation for decisions, test once).
set -euo pipefail
R=${R:-runs/knowledge_shapes}
STEPS=${STEPS:-1000}
N_VAL=${N_VAL:-64}
N_TEST=${N_TEST:-100}
PY=${PYTHON:-python}
T2I="$PY -m t2ijax"
CFG=configs/knowledge_shapes.py
ARMS=${ARMS:-"plain full no_key no_region no_completion"}
for arm in $ARMS; do
  [ -f $R/$arm/done ] && continue
  $T2I train --config=$CFG:$arm,steps=$STEPS --workdir=$R/$arm --config.progress=False
  touch $R/$arm/done
done
for split in validation:$N_VAL test:$N_TEST; do
  for arm in $ARMS; do
    out=$R/eval_${arm}_${split%%:*}
    [ -f $out/report.json ] && continue
    $T2I eval --config=$CFG:$arm --workdir=$R/$arm --benchmark=shapes --split=${split%%:*} \
        --num_prompts=${split##*:} --images_per_prompt=4 --out=$out
  done
done
# knowledge vs plain, then each component switched off vs full knowledge (and vs plain)
PAIRS="full:plain no_key:full no_region:full no_completion:full no_key:plain no_region:plain no_completion:plain"
for split in validation test; do
  args=""
  for pair in $PAIRS; do args="$args $R/eval_${pair%%:*}_$split $R/eval_${pair##*:}_$split"; done
  $PY experiments/eclipse_shapes/paired.py $args --json=$R/paired_$split.json
  $PY experiments/experts_shapes/fid.py --split=$split --clip=${CLIP:-runs/clip_shapes/export/clip} \
      $R/eval_plain_$split $R/eval_full_$split $R/eval_no_key_$split $R/eval_no_region_$split \
      $R/eval_no_completion_$split --json=$R/fid_$split.json
done
