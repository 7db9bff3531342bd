#!/usr/bin/env bash
# SUR-adapter on Shapes (configs/sur_shapes.py): the commands behind experiments/sur_shapes/README.md.
# Run from the repository root: bash experiments/sur_shapes/run.sh   (resumable: finished steps are skipped)
#   R=run folder, N=prompts per split (x 4 images each), BASE_WORKDIR=the frozen model's workdir (the CPU demo's,
#   `python -m t2ijax.demo` or `t2ijax train --config=configs/demo_shapes.py`), LLM=the Shapes Llama export
#   (experiments/shapes_lms/run.sh).
set -euo pipefail
R=${R:-runs/sur_shapes}
N=${N:-100}
BASE_WORKDIR=${BASE_WORKDIR:-runs/demo_r1}
LLM=${LLM:-runs/shapes_lms/llama/export/llama}
PY=${PY:-python}
T2I="$PY -m t2ijax"
EVAL="--benchmark=shapes --num_prompts=$N --images_per_prompt=4 --guidance_scale=1.0"
ARG="base=$R/base,llm=$LLM"
evaluate() {  # name, flags...: both held-out splits
  local name=$1; shift
  for split in validation test; do
    [ -f $R/eval_${name}_$split/report.json ] || $T2I eval $EVAL --split=$split --out=$R/eval_${name}_$split "$@"
  done
}
# The frozen model (U-Net + CLIP-style encoder trained on dense captions) as folders.
[ -d $R/base/unet ] || $T2I convert --workdir=$BASE_WORKDIR --out=$R/base
# Without the adapter: the frozen model prompted with the narrative captions, and with the dense ones (ceiling).
evaluate base_narrative --workdir=$BASE_WORKDIR --config=configs/demo_shapes.py --config.data.caption=narrative
evaluate base_dense --workdir=$BASE_WORKDIR --config=configs/demo_shapes.py
# The LLM's pooled vectors of the narrative train captions, once (shared by every arm through the cache path).
$T2I prepare --config=configs/sur_shapes.py:variant=full,$ARG --workdir=$R/full \
    --config.model.llm_feature_cache=$R/llm_vectors.array_record
# The adapter with both KD terms, and without the LLM term; same init, data order and budget.
for arm in full no_llm; do
  [ -f $R/$arm/checkpoints/1000/_CHECKPOINT_METADATA ] || $T2I train --config=configs/sur_shapes.py:variant=$arm,$ARG \
      --workdir=$R/$arm --config.model.llm_feature_cache=$R/llm_vectors.array_record --config.progress=False
  evaluate $arm --workdir=$R/$arm
done
# Validation-only sweep of the two KD weights (both at W); the test split is scored once, for the chosen one
# (TEST_W, set after reading the validation numbers).
for W in 1e-2; do
  arm=full_w$W
  [ -f $R/$arm/checkpoints/1000/_CHECKPOINT_METADATA ] || $T2I train --config=configs/sur_shapes.py:variant=full,$ARG \
      --workdir=$R/$arm --config.model.llm_feature_cache=$R/llm_vectors.array_record --config.progress=False \
      --config.model.loss_weights="{'llm': $W, 'prompt': $W}"
  [ -f $R/eval_${arm}_validation/report.json ] || $T2I eval $EVAL --split=validation --out=$R/eval_${arm}_validation \
      --workdir=$R/$arm
  if [ "${TEST_W:-}" = "$W" ] && [ ! -f $R/eval_${arm}_test/report.json ]; then
    $T2I eval $EVAL --split=test --out=$R/eval_${arm}_test --workdir=$R/$arm
  fi
done
