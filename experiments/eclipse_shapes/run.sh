#!/usr/bin/env bash
# ECLIPSE on Shapes: the commands behind experiments/eclipse_shapes/README.md. From the repository root:
#   bash experiments/eclipse_shapes/run.sh            (after the Shapes CLIP: see the README's step 1)
# R=run folder, N_VAL / N_TEST = prompts per split (x 4 images each), G = decoder guidance scale.
set -euo pipefail
R=${R:-runs/eclipse_shapes}
CLIP=${CLIP:-runs/clip_shapes/export/clip}
N_VAL=${N_VAL:-64}
N_TEST=${N_TEST:-100}
G=${G:-1.0}
T2I="${PYTHON:-python} -m t2ijax"
PRIOR="--config=configs/eclipse_shapes.py:clip=$CLIP,features=$R/features"
# 1. CLIP features of the train / validation / test splits (the CLIP runs once)
$T2I prepare $PRIOR --workdir=$R/eclipse
# 2. the priors, same data and steps: ECLIPSE (lambda 0.2), the lambda sweep, Projection (lambda 0), Diffusion
train_prior() {  # name, config arg, overrides...
  local name=$1 arg=$2; shift 2
  [ -d $R/$name/export/prior ] && return
  $T2I train --config=configs/eclipse_shapes.py:clip=$CLIP,features=$R/features$arg --workdir=$R/$name \
      --config.progress=False "$@"
  $T2I convert --workdir=$R/$name --out=$R/$name/export
}
train_prior eclipse ""
train_prior projection ",prior=projection"
train_prior diffusion ",prior=diffusion"
train_prior lambda04 "" --config.model.contrastive_weight=0.4
train_prior lambda10 "" --config.model.contrastive_weight=1.0
# 3. the decoder (image embedding -> image), trained once, shared by every prior
[ -d $R/decoder/checkpoints ] && [ -f $R/decoder/done ] || {
  $T2I train --config=configs/unclip_shapes.py:clip=$CLIP --workdir=$R/decoder --config.progress=False
  touch $R/decoder/done; }
# 4. embedding-level metrics of the priors on the held-out caches
for split in validation test; do
  ${PYTHON:-python} experiments/eclipse_shapes/prior_metrics.py $R/features/$split.array_record eclipse=$R/eclipse/export/prior \
      projection=$R/projection/export/prior diffusion=$R/diffusion/export/prior lambda04=$R/lambda04/export/prior \
      lambda10=$R/lambda10/export/prior --json=$R/prior_metrics_$split.json
done
# 5. text -> prior -> decoder, judged: the lambda sweep on validation, the three priors on test (once)
evaluate() {  # prior name, split, prompts
  [ -f $R/eval_$1_$2/report.json ] && return
  $T2I eval --config=configs/unclip_shapes.py:clip=$CLIP,prior=$R/$1/export/prior --workdir=$R/decoder \
      --benchmark=shapes --split=$2 --num_prompts=$3 --images_per_prompt=4 --guidance_scale=$G --out=$R/eval_$1_$2
}
for p in eclipse projection diffusion lambda04 lambda10; do evaluate $p validation $N_VAL; done
for p in eclipse projection diffusion; do evaluate $p test $N_TEST; done
P=experiments/eclipse_shapes/paired.py
${PYTHON:-python} $P $R/eval_eclipse_validation $R/eval_projection_validation $R/eval_eclipse_validation \
    $R/eval_diffusion_validation $R/eval_lambda04_validation $R/eval_eclipse_validation \
    $R/eval_lambda10_validation $R/eval_eclipse_validation --json=$R/paired_validation.json
${PYTHON:-python} $P $R/eval_eclipse_test $R/eval_projection_test $R/eval_eclipse_test $R/eval_diffusion_test \
    --json=$R/paired_test.json
# 6. outside the paper's protocol: the Diffusion-Baseline's guidance tuned on validation (embedding cosine), then
#    judged with the chosen scale (1) on validation and once on test
for g in 1 2 4; do
  ${PYTHON:-python} experiments/eclipse_shapes/prior_metrics.py $R/features/validation.array_record \
      diffusion=$R/diffusion/export/prior --guidance=$g
done
${PYTHON:-python} experiments/eclipse_shapes/prior_metrics.py $R/features/validation.array_record \
    diffusion=$R/diffusion/export/prior --guidance=4 --steps=100
for split in validation:$N_VAL test:$N_TEST; do
  [ -f $R/eval_diffusion_cfg1_${split%%:*}/report.json ] && continue
  $T2I eval --config=configs/unclip_shapes.py:clip=$CLIP,prior=$R/diffusion/export/prior \
      --config.model.prior_guidance_scale=1.0 --workdir=$R/decoder --benchmark=shapes --split=${split%%:*} \
      --num_prompts=${split##*:} --images_per_prompt=4 --guidance_scale=$G --out=$R/eval_diffusion_cfg1_${split%%:*}
done
${PYTHON:-python} $P $R/eval_eclipse_validation $R/eval_diffusion_cfg1_validation $R/eval_eclipse_test \
    $R/eval_diffusion_cfg1_test --json=$R/paired_cfg1.json
