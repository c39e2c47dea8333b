#!/usr/bin/env bash
# Export a training run to a Hugging Face folder (validated by logits), for evaluators.
#
#   RUN=/runs/mmed-internlm2-7b OUT=/hf/mmedlm2-7b launch/convert_to_hf.sh      # submits itself (1 GPU node)
#   sbatch launch/convert_to_hf.sh    |    DRY_RUN=1 ... launch/convert_to_hf.sh
#
# Knobs: RUN (training run dir, required), OUT (required), LAYOUT (llama | internlm2, default llama), DTYPE
# (bf16 | fp16 | fp32, default bf16), ITERATION (default latest), TOKENIZER (default: the run's), FORCE=1,
# SKIP_VALIDATION=1, CONTAINER_IMAGE (run through srun in the container), PYTHON, WAIT, TIME_LIMIT,
# PARTITION, ACCOUNT.
#SBATCH --job-name=mmed-convert
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --time=02:00:00
set -euo pipefail
# sbatch runs a spool copy of a script: then launch/ is found under the job's working directory (the repo)
source "$(cd "$(dirname "$0")" && [[ -f lib/common.sh ]] && pwd || echo launch)/lib/common.sh"
[[ "${1:-}" == --dry-run ]] && DRY_RUN=1
: "${RUN:?set RUN to the training run directory}" "${OUT:?set OUT to the HF output folder}"
PY=$(mmed_python "$(mmed_repo)")
cmd=("$PY" -m megatron_mmed.cli convert mcore-to-hf --ckpt "$RUN" --out "$OUT" --layout "${LAYOUT:-llama}"
  --dtype "${DTYPE:-bf16}")
[[ -n "${ITERATION:-}" ]] && cmd+=(--iteration "$ITERATION")
[[ -n "${TOKENIZER:-}" ]] && cmd+=(--tokenizer "$TOKENIZER")
[[ "${FORCE:-0}" == 1 ]] && cmd+=(--force)
[[ "${SKIP_VALIDATION:-0}" == 1 ]] && cmd+=(--skip-validation)
if [[ -n "${CONTAINER_IMAGE:-}" && -n "${SLURM_JOB_ID:-}" ]]; then
  mapfile -t cargs < <(mmed_container_args "$(mmed_repo)")
  cmd=(srun --ntasks=1 "${cargs[@]}" "${cmd[@]}")
fi
mmed_single_job "$(realpath "$0")" convert "${cmd[@]}"
