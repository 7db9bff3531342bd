#!/usr/bin/env bash
# Peak RSS of a fresh start vs a resume (issue #11): the tiny ELLA config trained 2 steps from scratch, and
# trained 1 step then resumed to 2. Usage: bash benchmarks/resume_memory.sh [runs] [config]
# Prints one line per run: fresh_kB resume_kB (GNU time's "Maximum resident set size").
set -euo pipefail
RUNS=${1:-3}
CONFIG=${2:-configs/ella_sd15.py:tiny}
PY=${PY:-.venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
peak() {  # workdir, total_steps
  /usr/bin/time -v "$PY" -m t2ijax train --config="$CONFIG" --workdir="$1" --config.total_steps="$2" \
      --config.progress=False > "$1.log" 2>&1
  grep "Maximum resident" "$1.log" | awk '{print $6}'
}
for i in $(seq "$RUNS"); do
  fresh=$(peak "$TMP/fresh$i" 2)
  peak "$TMP/resume$i" 1 > /dev/null
  resume=$(peak "$TMP/resume$i" 2)
  echo "run $i fresh_kB=$fresh resume_kB=$resume"
done
