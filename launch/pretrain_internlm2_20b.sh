#!/usr/bin/env bash
# InternLM2-20B continued pretraining on MMedC (megatron-core), one task per H100.
#
#   sbatch launch/pretrain_internlm2_20b.sh                          # header below: 4 node(s) x 8 GPUs
#   NODES=8 DATA=/data/tok/blend.json INIT_FROM=/ckpt/internlm2-20b-mcore launch/pretrain_internlm2_20b.sh
#   DRY_RUN=1 NODES=8 launch/pretrain_internlm2_20b.sh                # print commands + layout, submit nothing
#   DEVICE=cpu TASKS_PER_NODE=2 CONFIG=configs/train/tiny_cpu.yaml OVERRIDES="data.blend=TOK/blend.json" \
#     sbatch --wait launch/pretrain_internlm2_20b.sh                  # CPU smoke run (gloo)
#
# Default layout, chosen for 8xH100 nodes: 20b: TP=4 inside a node (NVLink) with sequence parallel, PP=2 across the 48 layers (24 a stage), DP over nodes; FP8 hybrid.
# Every knob is an environment variable: see launch/lib/pretrain.sh. On USR1 (sent 600 s before the
# time limit) or TERM the job checkpoints, requeues itself, and resumes from SAVE/latest with no manual step.
#SBATCH --job-name=mmed-internlm2-20b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append

MODEL_SIZE=internlm2-20b
DEFAULT_CONFIG=configs/train/internlm2_20b.yaml
DEFAULT_NODES=4
DEFAULT_LAYOUT="parallel.tp=4 parallel.pp=2 parallel.sequence_parallel=true"
DEFAULT_FP8=hybrid
SCRIPT=$(realpath "$0")
_repo=${MMED_REPO:-}
if [[ -z "$_repo" && -n "${SLURM_JOB_ID:-}" ]]; then # sbatch ran a copy: find the original script's repo
  _cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  [[ -f "$_cmd" ]] && _repo=$(cd "$(dirname "$_cmd")/.." && pwd)
fi
[[ -f "$_repo/launch/lib/common.sh" ]] || _repo=${SLURM_SUBMIT_DIR:-}
[[ -f "$_repo/launch/lib/common.sh" ]] || _repo=$(cd "$(dirname "$0")/.." && pwd)
[[ -f "$_repo/launch/lib/pretrain.sh" ]] || { echo "mmed launch: cannot find the repo (set MMED_REPO)" >&2; exit 2; }
source "$_repo/launch/lib/pretrain.sh" "$@"
