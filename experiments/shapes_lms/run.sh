#!/usr/bin/env bash
# Language models of the Shapes captions (configs/lm_shapes.py): the commands behind
# experiments/shapes_lms/README.md. Run from the repository root: bash experiments/shapes_lms/run.sh
#   R=run folder (default runs/shapes_lms); TEST=1 also scores the test split (once, at the end).
set -euo pipefail
R=${R:-runs/shapes_lms}
PY=${PY:-python}
T2I="$PY -m t2ijax"
for arch in llama t5; do
  # train split only: dense, short and narrative captions of every scene in each batch
  $T2I train --config=configs/lm_shapes.py:$arch --workdir=$R/$arch --config.progress=False
  # Hugging Face folders: $R/llama/export/llama (LlamaForCausalLM), $R/t5/export/t5 (T5ForConditionalGeneration)
  $T2I convert --workdir=$R/$arch --out=$R/$arch/export
done
# validation perplexity per caption kind + linear probes, trained models and random inits of the same architecture
$PY experiments/shapes_lms/probe.py --workdir=$R/llama --workdir=$R/t5 --probe_train=4000 --out=$R/results_validation.json
if [ "${TEST:-0}" = 1 ]; then
  $PY experiments/shapes_lms/probe.py --workdir=$R/llama --workdir=$R/t5 --probe_train=4000 --test --out=$R/results_test.json
fi
