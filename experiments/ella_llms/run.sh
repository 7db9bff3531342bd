#!/usr/bin/env bash
# ELLA on Shapes with trained language models as the frozen LLM (issue 16 item 6): the commands behind
# experiments/ella_llms/README.md. Run from the repository root: bash experiments/ella_llms/run.sh
#   LLMS=which LLMs (default "llama t5"); LLAMA / T5 = their Hugging Face export folders
#   (configs/lm_shapes.py, experiments/shapes_lms/); VARIANTS (default "tsc ln mlp"); R=run folder;
#   UNET_RUN=the ELLA Shapes run whose frozen stage-1 U-Net and (a)/(random-T5) evals are reused
#   (experiments/ella_shapes/run.sh, N=100 EVAL_PREFIX=eval100); N=prompts per split (x 4 images), G=guidance.
# Resumable: a step whose output exists is skipped (feature cache: its .json; training: its final checkpoint,
# an interrupted training resumes from its last checkpoint; eval: report.json; rejudge: report_programmatic.json).
set -euo pipefail
LLMS=${LLMS:-llama t5}
LLAMA=${LLAMA:-runs/shapes_lms/llama/export/llama}
T5=${T5:-runs/shapes_lms/t5_800/export/t5}
VARIANTS=${VARIANTS:-tsc ln mlp}
R=${R:-runs/ella_llms}
UNET_RUN=${UNET_RUN:-runs/ella_shapes_short}
N=${N:-100}
G=${G:-1.0}
STEPS=1500  # configs/ella_shapes.py's stage-2 budget
PY=${PY:-python}
T2I="$PY -m t2ijax"
EVAL="--benchmark=shapes --num_prompts=$N --images_per_prompt=4 --guidance_scale=$G"  # as experiments/ella_shapes/run.sh
for llm in $LLMS; do
  case $llm in llama) LLM=$LLAMA ;; t5) LLM=$T5 ;; *) echo "unknown LLM $llm" >&2; exit 2 ;; esac
  [ -f "$LLM/config.json" ] || { echo "no LLM export at $LLM" >&2; exit 2; }
  CFG="configs/ella_shapes.py:variant=VARIANT,unet_path=$UNET_RUN/unet/export/unet,llm=$LLM"
  CACHE=$R/$llm/features.array_record
  # The frozen LLM's features of the dense train captions (all 80 tokens), computed once per LLM.
  if [ ! -f "$CACHE.json" ]; then
    echo "== $(date -u +%FT%TZ) prepare $llm"
    $T2I prepare --config=${CFG/VARIANT/tsc} --workdir=$R/$llm/tsc --config.model.feature_cache=$CACHE
  fi
  for v in $VARIANTS; do
    W=$R/$llm/$v
    if [ ! -d "$W/checkpoints/$STEPS" ]; then
      echo "== $(date -u +%FT%TZ) train $llm $v"
      $T2I train --config=${CFG/VARIANT/$v} --workdir=$W --config.model.feature_cache=$CACHE --config.progress=False
    fi
    for split in test validation; do
      OUT=$R/$llm/eval100_${v}_$split
      if [ ! -f "$OUT/report.json" ]; then
        echo "== $(date -u +%FT%TZ) eval $llm $v $split"
        $T2I eval $EVAL --split=$split --out=$OUT --workdir=$W
      fi
      # The same judge under the name the existing eval100 folders carry (experiments/judge/rejudge.py)
      [ -f "$OUT/report_programmatic.json" ] || $PY experiments/judge/rejudge.py $OUT --judges=programmatic
    done
  done
done
echo "== $(date -u +%FT%TZ) done: $LLMS"

# Tables of experiments/ella_llms/README.md (programmatic judge, report_programmatic.json = what `t2ijax eval`
# writes in report.json): scores and categories of every arm present, then the paired differences.
$PY - "$R" "$UNET_RUN" <<'EOF'
import json, os, sys
R, U = sys.argv[1:3]
rows = [("(a) own encoder, dense prompts", f"{U}/eval100_unet"), ("random T5 + TSC", f"{U}/eval100_tsc"),
        ("random T5 + LN", f"{U}/eval100_ln")]
rows += [(f"{llm} + {v.upper()}", f"{R}/{llm}/eval100_{v}") for llm in ("llama", "t5") for v in ("tsc", "ln", "mlp")]
rows += [("reference: (a), own short captions", f"{U}/eval100_unet_own_captions")]
cats = ("entity", "binding", "size", "spatial", "count")
print("| model | test | validation | test: " + " / ".join(cats) + " | validation: " + " / ".join(cats) + " |")
print("|---|---|---|---|---|")
for name, base in rows:
    r = {}
    for split in ("test", "validation"):
        path = f"{base}_{split}/report_programmatic.json"
        if os.path.exists(path):
            with open(path) as f:
                r[split] = json.load(f)
    if len(r) < 2:
        continue
    score = [f"{r[s]['dpg_score']:.2f}" for s in ("test", "validation")]
    cat = [" / ".join(f"{r[s]['compbench'][c]['question']:.1f}" for c in cats) for s in ("test", "validation")]
    print(f"| {name} | {score[0]} | {score[1]} | {cat[0]} | {cat[1]} |")
EOF
NAMES=(); PAIRS=()
have() { [ -f "$R/$1/eval100_${2}_validation/report_programmatic.json" ] && [ -f "$R/$1/eval100_${2}_test/report_programmatic.json" ]; }
for llm in llama t5; do
  for v in tsc ln mlp; do have $llm $v && NAMES+=("${llm}_$v=$R/$llm/eval100_$v") && PAIRS+=("${llm}_$v:unet"); done
  have $llm tsc && have $llm ln && PAIRS+=("${llm}_tsc:${llm}_ln")
  have $llm tsc && have $llm mlp && PAIRS+=("${llm}_tsc:${llm}_mlp")
  for v in tsc ln; do have $llm $v && PAIRS+=("${llm}_$v:$v"); done  # trained LLM - random T5
  for v in tsc ln mlp; do have $llm $v && PAIRS+=("${llm}_$v:unet_own_captions"); done  # vs (a) on its own captions
done
for v in tsc ln mlp; do have llama $v && have t5 $v && PAIRS+=("llama_$v:t5_$v"); done
[ ${#PAIRS[@]} = 0 ] || $PY experiments/ella_shapes/paired.py $UNET_RUN "${PAIRS[@]}" "${NAMES[@]}" --prefix=eval100 \
    --report=report_programmatic.json
