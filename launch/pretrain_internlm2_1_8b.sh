#!/usr/bin/env bash
# InternLM2-1.8B continued pretraining on MMedC: launch/pretrain.sh with configs/train/internlm2_1_8b.yaml, which holds
# the model, parallel layout, FP8 and the job's size (`launch:`). Knobs and examples: launch/pretrain.sh --help.
#
#   launch/pretrain_internlm2_1_8b.sh [--dry-run]       # submits itself, sized from the recipe
#   sbatch launch/pretrain_internlm2_1_8b.sh            # from the repo root; this header is the recipe's job
#   DEVICE=cpu TASKS_PER_NODE=2 CONFIG=configs/train/tiny_cpu.yaml OVERRIDES="data.blend=TOK/blend.json" \
#     sbatch --nodes=1 --wait launch/pretrain_internlm2_1_8b.sh   # CPU smoke run (gloo) on one node
#SBATCH --job-name=mmed-internlm2-1_8b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
exec bash "$(cd "$(dirname "$0")" && [[ -f pretrain.sh ]] && pwd || echo launch)/pretrain.sh" configs/train/internlm2_1_8b.yaml "$@"
