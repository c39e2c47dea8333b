#!/usr/bin/env bash
# Evaluate a Hugging Face model folder on MMedBench (six languages), the paper's protocol by default.
#
#   MODEL=/hf/mmedlm2-7b DATA=/data/MMedBench OUT=/eval/mmedlm2-7b launch/eval_mmedbench.sh   # submits itself
#   sbatch launch/eval_mmedbench.sh    |    DRY_RUN=1 ... launch/eval_mmedbench.sh
#
# Knobs: MODEL, DATA, OUT (required), MODE (generate | loglik, default generate), BACKEND (hf | vllm, default
# hf), BATCH_SIZE (default 16), SHOTS (default 0), EXTRA (more `mmed eval mmedbench` arguments),
# CONTAINER_IMAGE, PYTHON, WAIT, TIME_LIMIT, PARTITION, ACCOUNT. Rerunning resumes from predictions.jsonl.
#SBATCH --job-name=mmed-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --time=08:00:00
set -euo pipefail
# sbatch runs a spool copy of a script: then launch/ is found under the job's working directory (the repo)
source "$(cd "$(dirname "$0")" && [[ -f lib/common.sh ]] && pwd || echo launch)/lib/common.sh"
[[ "${1:-}" == --dry-run ]] && DRY_RUN=1
: "${MODEL:?set MODEL to a HF model folder}" "${DATA:?set DATA to the MMedBench folder}" "${OUT:?set OUT}"
PY=$(mmed_python "$(mmed_repo)")
# shellcheck disable=SC2206  # EXTRA is a whitespace-separated argument list by design
cmd=("$PY" -m megatron_mmed.cli eval mmedbench --model "$MODEL" --data "$DATA" --out "$OUT"
  --mode "${MODE:-generate}" --backend "${BACKEND:-hf}" --batch-size "${BATCH_SIZE:-16}" --shots "${SHOTS:-0}"
  --no-progress ${EXTRA:-})
if [[ -n "${CONTAINER_IMAGE:-}" && -n "${SLURM_JOB_ID:-}" ]]; then
  mapfile -t cargs < <(mmed_container_args "$(mmed_repo)")
  cmd=(srun --ntasks=1 "${cargs[@]}" "${cmd[@]}")
fi
mmed_single_job "$(realpath "$0")" eval "${cmd[@]}"
