#!/usr/bin/env bash
# The MMedC preprocessing pipeline as slurm jobs, one array per stage, chained with --dependency=afterok:
#   [extract (array) ->] prep (array) -> dedup signatures -> buckets -> clusters -> filter (arrays) -> decontam
#   -> tokenize
# Array tasks split the work with each stage's --rank/--world-size (read from SLURM_ARRAY_TASK_ID/COUNT);
# every task resumes from its completion markers, so a failed or preempted array can simply be resubmitted.
# decontam and tokenize are single tasks using WORKERS processes (their work is a small fraction).
#
#   INPUTS="/raw/en /raw/zh" OUT=/data/mmedc BENCHMARK=/data/MMedBench TOKENIZER=/models/internlm2-7b/tokenizer.model \
#     launch/prep_mmedc.sh
#   DRY_RUN=1 ... launch/prep_mmedc.sh     # print the sbatch commands, submit nothing
#
# Knobs (environment): INPUTS (space-separated paths of raw text), EXTRACT_INPUTS (PDFs/HTML/WARC paths for an
# extract array before prep, whose OUT/extract/docs prep then reads too; one of the two is required), EXTRACT_TASKS
# (default PREP_TASKS), OUT (required), BENCHMARK (required),
# TOKENIZER (empty: a SentencePiece model is trained on the data, for smoke tests only), RECIPE (pipeline recipe,
# default configs/prep/mmedc.yaml), PREP_TASKS (default 64), DEDUP_TASKS (default 16), WORKERS (default 16),
# CPUS_PER_TASK (default 4), TIME_LIMIT, PARTITION, ACCOUNT, QOS, PYTHON, WAIT (1: block until the last job ends),
# DRY_RUN.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/common.sh
source "$SCRIPT_DIR/lib/common.sh"
REPO=${MMED_REPO:-$(cd "$SCRIPT_DIR/.." && pwd)}
PY=$(mmed_python "$REPO")
[[ "${1:-}" == --dry-run ]] && DRY_RUN=1
[[ "${1:-}" == -h || "${1:-}" == --help ]] && { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0; }

[[ -n "${INPUTS:-}${EXTRACT_INPUTS:-}" ]] || mmed_die "set INPUTS (raw text) and/or EXTRACT_INPUTS (PDF/HTML/WARC)"
: "${OUT:?set OUT to the output root}"
: "${BENCHMARK:?set BENCHMARK to the MMedBench QA folder}"
RECIPE=${RECIPE:-$REPO/configs/prep/mmedc.yaml}
[[ -f "$RECIPE" ]] || mmed_die "recipe not found: $RECIPE"
PREP_TASKS=${PREP_TASKS:-64}
DEDUP_TASKS=${DEDUP_TASKS:-16}
EXTRACT_TASKS=${EXTRACT_TASKS:-$PREP_TASKS}
WORKERS=${WORKERS:-16}
CPUS_PER_TASK=${CPUS_PER_TASK:-4}
DRY_RUN=${DRY_RUN:-0}

# shellcheck disable=SC2206  # INPUTS is a whitespace-separated list by design
INPUT_ARR=(${INPUTS:-})
MMED=("$PY" -m megatron_mmed.cli)
COMMON=(--chdir="$REPO" --parsable --kill-on-invalid-dep=yes "--export=ALL,MMED_REPO=$REPO"
  "--output=$OUT/logs/%x-%A_%a.out")
[[ -n "${TIME_LIMIT:-}" ]] && COMMON+=("--time=$TIME_LIMIT")
[[ -n "${PARTITION:-}" ]] && COMMON+=("--partition=$PARTITION")
[[ -n "${ACCOUNT:-}" ]] && COMMON+=("--account=$ACCOUNT")
[[ -n "${QOS:-}" ]] && COMMON+=("--qos=$QOS")

LAST=""
# submit NAME TASKS CPUS -- COMMAND...: one job (an array when TASKS > 1) after the previous one succeeded
submit() {
  local name=$1 tasks=$2 cpus=$3
  shift 4
  local sb=(sbatch "${COMMON[@]}" "--job-name=mmed-$name" "--cpus-per-task=$cpus" --ntasks=1)
  ((tasks > 1)) && sb+=("--array=0-$((tasks - 1))")
  [[ -n "$LAST" ]] && sb+=("--dependency=afterok:$LAST")
  local cmd
  cmd=$(mmed_show "$@")
  if [[ "$DRY_RUN" == 1 ]]; then
    mmed_show "${sb[@]}" --wrap "$cmd"
    LAST="<$name>"
  else
    LAST=$("${sb[@]}" --wrap "$cmd")
    LAST=${LAST%%;*}
    mmed_log "$name: job $LAST (${tasks} task(s))"
  fi
}

[[ "$DRY_RUN" == 1 ]] && echo "== megatron-mmed prep_mmedc (dry run): recipe $RECIPE -> $OUT"
[[ "$DRY_RUN" == 1 ]] || mkdir -p "$OUT/logs"
if [[ -n "${EXTRACT_INPUTS:-}" ]]; then
  # shellcheck disable=SC2206
  EXTRACT_ARR=($EXTRACT_INPUTS)
  submit extract "$EXTRACT_TASKS" "$CPUS_PER_TASK" -- "${MMED[@]}" extract --input "${EXTRACT_ARR[@]}" \
    --output "$OUT/extract" --workers "$CPUS_PER_TASK" --config "$RECIPE" --no-progress
  INPUT_ARR+=("$OUT/extract/docs")
fi
submit prep "$PREP_TASKS" "$CPUS_PER_TASK" -- "${MMED[@]}" prep --input "${INPUT_ARR[@]}" --output "$OUT/prep" \
  --config "$RECIPE" --no-progress
for stage in signatures buckets clusters filter; do
  submit "dedup-$stage" "$DEDUP_TASKS" "$CPUS_PER_TASK" -- "${MMED[@]}" dedup --input "$OUT/prep" \
    --output "$OUT/dedup" --stage "$stage" --config "$RECIPE" --no-progress
done
submit decontam 1 "$WORKERS" -- "${MMED[@]}" decontam --input "$OUT/dedup" --benchmark "$BENCHMARK" \
  --output "$OUT/decontam" --workers "$WORKERS" --config "$RECIPE" --no-progress
if [[ -n "${TOKENIZER:-}" ]]; then
  submit tokenize 1 "$WORKERS" -- "${MMED[@]}" tokenize --input "$OUT/decontam" --tokenizer "$TOKENIZER" \
    --output "$OUT/tok" --workers "$WORKERS" --config "$RECIPE" --no-progress
else
  # smoke runs without a tokenizer: the pipeline command trains the small SentencePiece model, then tokenizes
  submit tokenize 1 "$WORKERS" -- "${MMED[@]}" pipeline --config "$RECIPE" "output=$OUT" "stages=[tokenize]" \
    workers="$WORKERS" --no-progress
fi

if [[ "$DRY_RUN" != 1 && "${WAIT:-0}" == 1 ]]; then
  mmed_log "waiting for the last job ($LAST)"
  while squeue -h -j "$LAST" 2>/dev/null | grep -q .; do sleep 2; done
  state=$(scontrol show job "$LAST" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
  [[ -z "$state" || "$state" == COMPLETED ]] || mmed_die "last job $LAST ended $state (see $OUT/logs)"
  [[ -f "$OUT/tok/blend.json" ]] || mmed_die "no $OUT/tok/blend.json: a stage failed (see $OUT/logs)"
  mmed_log "done: $OUT/tok/blend.json"
fi
