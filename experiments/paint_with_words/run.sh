#!/usr/bin/env bash
# Paint-with-words placement accuracy on Shapes: the commands behind experiments/paint_with_words/README.md.
# From the repository root, after experiments/knowledge_shapes/run.sh (its `plain` arm is the painted model):
#   bash experiments/paint_with_words/run.sh
set -euo pipefail
K=${K:-runs/knowledge_shapes}
R=${R:-runs/paint_with_words}
PY=${PYTHON:-python}
mkdir -p $R
# the expert ensemble: ERNIE's 4 equal timestep blocks grown from the plain model
if [ ! -f $K/experts4/done ]; then
  $PY -m t2ijax train --config=configs/knowledge_shapes.py:experts4 --workdir=$K/experts4 \
      --config.init_from=$K/plain --config.progress=False
  touch $K/experts4/done
fi
SETUPS="--setup=ddim=$K/plain:ddim --setup=euler=$K/plain:euler --setup=heun=$K/plain:heun \
        --setup=experts4_ddim=$K/experts4:ddim"
# the w' sweep on validation prompts, then the test split once at w'=0 and each setup's best validation w'
$PY experiments/paint_with_words/run.py --split=validation --num_prompts=${N_VAL:-48} --images=2 \
    --scales=${SCALES:-0,4,16,64,256} $SETUPS --json=$R/validation.json
$PY experiments/paint_with_words/run.py --split=test --num_prompts=${N_TEST:-100} --images=2 \
    --best_from=$R/validation.json $SETUPS --json=$R/test.json
