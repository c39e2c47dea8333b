# Body of launch/pretrain_internlm2_*.sh (sourced after the size's defaults). Two modes:
#  - outside slurm (`launch/pretrain_internlm2_7b.sh`): submits itself with sbatch, sized from NODES,
#    TASKS_PER_NODE and DEVICE (WAIT=1 adds --wait);
#  - inside the batch job (`sbatch launch/pretrain_internlm2_7b.sh`, or the self-submission): starts one task
#    per GPU with srun, forwards slurm's USR1/TERM warning to the training processes (they checkpoint and
#    exit), then requeues the job, which resumes from SAVE/latest on its next start.
# `--dry-run` or DRY_RUN=1 prints every resolved command and the parallel layout, and submits nothing.
#
# Knobs (environment): NODES, TASKS_PER_NODE (default 8: one per GPU), DEVICE (cuda | cpu: no GPU request,
# gloo), CONFIG, OVERRIDES (extra dot-list overrides), LAYOUT (the size's parallel overrides), FP8 (hybrid |
# e4m3 | empty), DATA (blend.json), SAVE (run dir), INIT_FROM (hf-to-mcore output), CONTAINER_IMAGE,
# CONTAINER_MOUNTS, WANDB_PROJECT / WANDB_ENTITY / WANDB_MODE, JOB_NAME, TIME_LIMIT, PARTITION, ACCOUNT, QOS,
# REQUEUE (1: requeue after a signal), MASTER_PORT, PYTHON, DRY_RUN, WAIT.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,/^$/p' "$SCRIPT"; exit 0 ;;
    *) mmed_die "unknown argument '$arg' (knobs are environment variables; see --help)" ;;
  esac
done

REPO=$(mmed_repo)
PY=$(mmed_python "$REPO")
DEVICE=${DEVICE:-cuda}
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || mmed_die "DEVICE must be cuda or cpu, got '$DEVICE'"
NODES=${NODES:-${SLURM_NNODES:-$DEFAULT_NODES}}
TASKS_PER_NODE=${TASKS_PER_NODE:-8}
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$TASKS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || mmed_die "NODES and TASKS_PER_NODE must be positive integers"
WORLD=$((NODES * TASKS_PER_NODE))
CONFIG=${CONFIG:-$DEFAULT_CONFIG}
[[ "$CONFIG" = /* ]] || CONFIG="$REPO/$CONFIG"
[[ -f "$CONFIG" ]] || mmed_die "config not found: $CONFIG"
JOB_NAME=${JOB_NAME:-mmed-$MODEL_SIZE}
SAVE=${SAVE:-$REPO/runs/$JOB_NAME}
if [[ "$DEVICE" == cpu ]]; then FP8=${FP8-}; LAYOUT=${LAYOUT-}; else FP8=${FP8-$DEFAULT_FP8}; LAYOUT=${LAYOUT-$DEFAULT_LAYOUT}; fi
DRY_RUN=${DRY_RUN:-0}

# shellcheck disable=SC2206  # LAYOUT/OVERRIDES are whitespace-separated dot-lists by design
TRAIN=(-m megatron_mmed.cli train --config "$CONFIG" $LAYOUT "checkpoint.dir=$SAVE")
[[ -n "${DATA:-}" ]] && TRAIN+=("data.blend=$DATA")
[[ -n "${INIT_FROM:-}" ]] && TRAIN+=("checkpoint.init_from=$INIT_FROM")
[[ -n "$FP8" ]] && TRAIN+=("precision.fp8=$FP8")
[[ -n "${WANDB_PROJECT:-}" ]] && TRAIN+=("logging.wandb_project=$WANDB_PROJECT")
# shellcheck disable=SC2206
TRAIN+=(${OVERRIDES:-})

submit_cmd() {
  local sb=(sbatch "--job-name=$JOB_NAME" "--nodes=$NODES" "--ntasks-per-node=$TASKS_PER_NODE" "--chdir=$REPO"
    "--export=ALL,MMED_REPO=$REPO" "--output=$SAVE/logs/%x-%j.out" "--open-mode=append")
  if [[ "$DEVICE" == cpu ]]; then sb+=("--gpus-per-node=0"); else sb+=("--gpus-per-node=$TASKS_PER_NODE"); fi
  [[ -n "${TIME_LIMIT:-}" ]] && sb+=("--time=$TIME_LIMIT")
  [[ -n "${PARTITION:-}" ]] && sb+=("--partition=$PARTITION")
  [[ -n "${ACCOUNT:-}" ]] && sb+=("--account=$ACCOUNT")
  [[ -n "${QOS:-}" ]] && sb+=("--qos=$QOS")
  [[ "${WAIT:-0}" == 1 ]] && sb+=(--wait)
  sb+=("$SCRIPT")
  printf '%s\n' "${sb[@]}"
}

srun_cmd() {
  local s=(srun "--ntasks=$WORLD" "--ntasks-per-node=$TASKS_PER_NODE" --kill-on-bad-exit=1 --export=ALL)
  mapfile -t cargs < <(mmed_container_args "$REPO")
  s+=("${cargs[@]}")
  # one process per task; torch.distributed's env:// rendezvous reads these (no torchrun needed)
  s+=(bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec "$@"' mmed-task)
  s+=("$PY" "${TRAIN[@]}")
  printf '%s\n' "${s[@]}"
}

if [[ "$DRY_RUN" == 1 ]]; then
  echo "== megatron-mmed launch (dry run): $MODEL_SIZE"
  echo "repo=$REPO device=$DEVICE nodes=$NODES tasks_per_node=$TASKS_PER_NODE world_size=$WORLD"
  echo "config=$CONFIG save=$SAVE data=${DATA:-<from config>} init_from=${INIT_FROM:-<none>} fp8=${FP8:-off}"
  echo "container=${CONTAINER_IMAGE:-<none>} wandb_mode=${WANDB_MODE:-offline} layout_overrides=${LAYOUT:-<config>}"
  echo "== submit:"; mapfile -t c < <(submit_cmd); mmed_show "${c[@]}"
  echo "== each node runs:"; mapfile -t c < <(srun_cmd); mmed_show "${c[@]}"
  echo "== layout check (mmed train --dry-run --world-size $WORLD):"
  exec "$PY" "${TRAIN[@]}" --dry-run --world-size "$WORLD"
fi

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  command -v sbatch >/dev/null || mmed_die "sbatch not found: run this on a slurm login node (or DRY_RUN=1)"
  mkdir -p "$SAVE/logs"
  mapfile -t c < <(submit_cmd)
  mmed_log "submitting: $(mmed_show "${c[@]}")"
  exec "${c[@]}"
fi

# ---- inside the batch job ----
cd "$REPO"
mkdir -p "$SAVE"
export MASTER_ADDR=${MASTER_ADDR:-$(mmed_master_addr)}
export MASTER_PORT=${MASTER_PORT:-$(mmed_master_port)}
if [[ "$DEVICE" == cuda ]]; then mmed_gpu_env; else export CUDA_VISIBLE_DEVICES=""; fi
mmed_wandb_env "$SAVE"
mmed_log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $NODES node(s) x $TASKS_PER_NODE task(s), rendezvous $MASTER_ADDR:$MASTER_PORT"

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
