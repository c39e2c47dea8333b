#!/usr/bin/env bash
# InternLM2-7B (or MMedLM 2) fine-tuning on MMedBench Train, the paper's protocol: launch/pretrain.sh with STAGE=finetune
# and configs/finetune/mmedbench_full.yaml, or mmedbench_lora.yaml with PEFT=lora. Same knobs (NODES, SAVE,
# INIT_FROM, OVERRIDES, ...; DATA is the MMedBench folder, TOKENIZER its tokenizer) and requeue behaviour as
# pretraining; see launch/pretrain.sh --help.
#
#   DATA=MMedBench INIT_FROM=/ckpt/internlm2-7b-mcore TOKENIZER=/ckpt/internlm2-7b-mcore/tokenizer/tokenizer.model \
#     launch/finetune_internlm2_7b.sh [--dry-run]              # full fine-tuning (submits itself)
#   PEFT=lora DATA=... INIT_FROM=... TOKENIZER=... launch/finetune_internlm2_7b.sh   # LoRA
#SBATCH --job-name=mmed-ft-internlm2-7b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
case "${PEFT:-none}" in none | "") recipe=full ;; lora) recipe=lora ;; *) echo "mmed launch: error: PEFT must be none or lora, got '$PEFT'" >&2; exit 2 ;; esac
STAGE=finetune exec bash "$(cd "$(dirname "$0")" && [[ -f pretrain.sh ]] && pwd || echo launch)/pretrain.sh" "configs/finetune/mmedbench_$recipe.yaml" "$@"
