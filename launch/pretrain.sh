#!/usr/bin/env bash
# Continued pretraining on megatron-core under slurm, one task per GPU, sized and configured by a recipe.
#
#   launch/pretrain.sh configs/train/internlm2_7b.yaml                # submits itself, sized from the recipe
#   NODES=8 DATA=/data/tok/blend.json INIT_FROM=/ckpt/internlm2-7b-mcore launch/pretrain.sh configs/train/internlm2_7b.yaml
#   launch/pretrain.sh configs/train/internlm2_7b.yaml --dry-run      # values + their sources, sbatch/srun, layout
#   DEVICE=cpu TASKS_PER_NODE=2 OVERRIDES="data.blend=TOK/blend.json" launch/pretrain.sh configs/train/tiny_cpu.yaml
#   STAGE=finetune launch/pretrain.sh configs/finetune/mmedbench_lora.yaml   # what launch/finetune_*.sh run
#
# Run it: it submits itself. launch/pretrain_internlm2_{1_8b,7b,20b}.sh run it with their recipe, and those (not
# this file) can also be given to sbatch directly, since their #SBATCH header is their recipe's job.
# The recipe (configs/train/*.yaml) holds everything: model, parallel layout, precision (FP8) and the job's
# `launch:` section (nodes, tasks_per_node, device, job_name, time_limit). Nothing here has a default of its own.
# Environment knobs override the recipe and OVERRIDES (dot-list) override both; the dry run names the source of
# every value (yaml, env NAME, override, default):
#   NODES (inside a job: the allocation's node count), TASKS_PER_NODE, DEVICE (cuda | cpu: no GPU request, gloo),
#   JOB_NAME, TIME_LIMIT, FP8 (hybrid | e4m3 | empty: off), DATA (blend.json), SAVE (run dir; default
#   runs/<job name>), INIT_FROM (hf-to-mcore output), WANDB_PROJECT; with STAGE=finetune, DATA is the MMedBench
#   folder (data.train) and TOKENIZER (data.tokenizer) and PEFT (none | lora) are knobs too
# Launcher knobs: STAGE (train: `mmed train`, the default | finetune: `mmed finetune` with a configs/finetune/
# recipe), CONFIG (recipe instead of the argument), OVERRIDES, PARTITION, ACCOUNT, QOS, CONTAINER_IMAGE,
# CONTAINER_MOUNTS, WANDB_MODE / WANDB_ENTITY, REQUEUE (1: requeue after a signal), MASTER_PORT, PYTHON, DRY_RUN,
# WAIT (1: sbatch --wait). Relative paths are taken from the repo root, where the job runs.
#
# Outside slurm this submits itself (sbatch --chdir=REPO); inside the batch job it starts one task per GPU with
# srun, forwards slurm's USR1 (600 s before the time limit) or TERM to the training processes (they checkpoint
# and exit), then requeues the job, which resumes from SAVE/latest on its next start.
set -euo pipefail
# sbatch runs a spool copy of a script: then launch/ is found under the job's working directory (the repo)
source "$(cd "$(dirname "$0")" && [[ -f lib/common.sh ]] && pwd || echo launch)/lib/common.sh"

RECIPE=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$(mmed_repo)/launch/pretrain.sh" | sed '$d'; exit 0 ;;
    -*) mmed_die "unknown argument '$arg' (knobs are environment variables; see --help)" ;;
    *) [[ -z "$RECIPE" ]] || mmed_die "one recipe only, got '$RECIPE' and '$arg'"; RECIPE=$arg ;;
  esac
done
RECIPE=${CONFIG:-$RECIPE}
[[ -n "$RECIPE" ]] || mmed_die "no recipe: launch/pretrain.sh configs/train/NAME.yaml (or CONFIG=...)"
[[ -z "${LAYOUT:-}" ]] || mmed_die "LAYOUT is gone: the parallel layout is in the recipe; use OVERRIDES='parallel.tp=...'"

STAGE=${STAGE:-train}
[[ "$STAGE" == train || "$STAGE" == finetune ]] || mmed_die "STAGE must be train or finetune, got '$STAGE'"
export STAGE # a self-submitted or requeued job runs the same stage (sbatch --export=ALL)

REPO=$(mmed_repo)
cd "$REPO"
PY=$(mmed_python "$REPO")
DRY_RUN=${DRY_RUN:-0}
# shellcheck disable=SC2206  # OVERRIDES is a whitespace-separated dot-list by design
USER_OVERRIDES=(${OVERRIDES:-})

# The recipe + knobs + overrides, resolved by Python (one key=value a line; `arg` lines: the training arguments)
values=$("$PY" -m megatron_mmed.cli "$STAGE" --config "$RECIPE" --from-env --launch-values "${USER_OVERRIDES[@]}")
declare -A V
ARGS=()
while IFS= read -r line; do
  case "$line" in
    arg=*) ARGS+=("${line#arg=}") ;;
    *=*) V[${line%%=*}]=${line#*=} ;;
  esac
done <<<"$values"
TRAIN=(-m megatron_mmed.cli "$STAGE" --config "${V[recipe]}" "${ARGS[@]}")
SAVE=${V[save]}

submit_cmd() {
  local sb=(sbatch "--job-name=${V[job_name]}" "--nodes=${V[nodes]}" "--ntasks-per-node=${V[tasks_per_node]}")
  if [[ "${V[device]}" == cpu ]]; then sb+=("--gpus-per-node=0"); else sb+=("--gpus-per-node=${V[tasks_per_node]}" --exclusive); fi
  sb+=("--time=${V[time_limit]}" "--signal=B:USR1@600" --requeue "--open-mode=append" "--chdir=$REPO" --export=ALL
    "--output=$SAVE/logs/%x-%j.out")
  [[ -n "${PARTITION:-}" ]] && sb+=("--partition=$PARTITION")
  [[ -n "${ACCOUNT:-}" ]] && sb+=("--account=$ACCOUNT")
  [[ -n "${QOS:-}" ]] && sb+=("--qos=$QOS")
  [[ "${WAIT:-0}" == 1 ]] && sb+=(--wait)
  sb+=("$REPO/launch/pretrain.sh" "${V[recipe]}")
  printf '%s\n' "${sb[@]}"
}

srun_cmd() {
  local s=(srun "--ntasks=${V[world_size]}" "--ntasks-per-node=${V[tasks_per_node]}" --kill-on-bad-exit=1 --export=ALL)
  mapfile -t cargs < <(mmed_container_args "$REPO")
  s+=("${cargs[@]}")
  # one process per task; torch.distributed's env:// rendezvous reads these (no torchrun needed)
  s+=(bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec "$@"' mmed-task)
  s+=("$PY" "${TRAIN[@]}")
  printf '%s\n' "${s[@]}"
}

if [[ "$DRY_RUN" == 1 ]]; then
  echo "== megatron-mmed launch (dry run): ${V[recipe]}"
  echo "repo=$REPO device=${V[device]} nodes=${V[nodes]} tasks_per_node=${V[tasks_per_node]} world_size=${V[world_size]}"
  echo "job_name=${V[job_name]} save=$SAVE container=${CONTAINER_IMAGE:-<none>} wandb_mode=${WANDB_MODE:-offline}"
  echo "== submit:"; mapfile -t c < <(submit_cmd); mmed_show "${c[@]}"
  echo "== each node runs:"; mapfile -t c < <(srun_cmd); mmed_show "${c[@]}"
  echo "== sources and layout check (mmed $STAGE --dry-run --world-size ${V[world_size]}):"
  exec "$PY" -m megatron_mmed.cli "$STAGE" --config "${V[recipe]}" --from-env --dry-run --world-size "${V[world_size]}" \
    "${USER_OVERRIDES[@]}"
fi

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  command -v sbatch >/dev/null || mmed_die "sbatch not found: run this on a slurm login node (or DRY_RUN=1)"
  mkdir -p "$SAVE/logs"
  mapfile -t c < <(submit_cmd)
  mmed_log "submitting: $(mmed_show "${c[@]}")"
  exec "${c[@]}"
fi

# ---- inside the batch job ----
mkdir -p "$SAVE"
export MASTER_ADDR=${MASTER_ADDR:-$(mmed_master_addr)}
export MASTER_PORT=${MASTER_PORT:-$(mmed_master_port)}
if [[ "${V[device]}" == cuda ]]; then mmed_gpu_env; else export CUDA_VISIBLE_DEVICES=""; fi
mmed_wandb_env "$SAVE"
mmed_log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): ${V[nodes]} node(s) x ${V[tasks_per_node]} task(s), rendezvous $MASTER_ADDR:$MASTER_PORT"

PREEMPTED=0
SRUN_PID=
forward() {
  PREEMPTED=1
  mmed_log "received $1: asking the training to checkpoint and stop"
  [[ -n "$SRUN_PID" ]] && kill -s USR1 "$SRUN_PID" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

mapfile -t c < <(srun_cmd)
mmed_log "$(mmed_show "${c[@]}")"
"${c[@]}" &
SRUN_PID=$!
rc=0
while true; do
  wait "$SRUN_PID" && rc=0 || rc=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break # wait was only interrupted by a trapped signal
done

if [[ "$PREEMPTED" == 1 && "$rc" == 0 && "${REQUEUE:-1}" == 1 ]]; then
  mmed_log "checkpoint saved after the signal; requeueing job $SLURM_JOB_ID (it resumes from $SAVE/latest)"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
mmed_log "training exited with code $rc"
exit "$rc"
