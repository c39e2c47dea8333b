# Shared helpers for the launch scripts (sourced, not run). Every knob is an environment variable; see the
# scripts' headers. Nothing here prints secrets: WANDB_API_KEY and other *KEY*/*TOKEN* values are never echoed.

mmed_die() { echo "mmed launch: error: $*" >&2; exit 2; }
mmed_log() { echo "[mmed $(date +%H:%M:%S)] $*" >&2; }

# The repository this file belongs to. Scripts source it with one line: their own folder's lib/common.sh, or,
# when sbatch runs a spool copy of the script, launch/lib/common.sh under the job's working directory, which is
# the repo (sbatch from the repo root, or --chdir=REPO as every self-submission does).
_mmed_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mmed_repo() { echo "$_mmed_root"; }

# The python that runs `mmed`: PYTHON, else the repo's .venv, else python3 (inside a container image).
mmed_python() {
  local repo=$1
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"
  elif [[ -x "$repo/.venv/bin/python" && -z "${CONTAINER_IMAGE:-}" ]]; then echo "$repo/.venv/bin/python"
  else echo python3
  fi
}

# Print a command line with each argument shell-quoted (what --dry-run shows).
mmed_show() { printf '%q ' "$@"; printf '\n'; }

# First host of the allocation (the rendezvous host) and a port derived from the job id, so that two jobs
# sharing a node never collide.
mmed_master_addr() {
  if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null; then
    scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1
  else
    echo 127.0.0.1
  fi
}
mmed_master_port() { echo $((20000 + ${SLURM_JOB_ID:-0} % 20000)); }

# srun arguments for a pyxis/enroot container when CONTAINER_IMAGE is set.
mmed_container_args() {
  local repo=$1
  if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
    local mounts="$repo:$repo${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
    printf '%s\n' "--container-image=$CONTAINER_IMAGE" "--container-mounts=$mounts" "--container-workdir=$repo" \
      "--no-container-mount-home"
  fi
}

# Environment Megatron wants on H100 clusters (exported into every task).
mmed_gpu_env() {
  # TP/SP communication must be issued in order with compute: one hardware queue per device.
  export CUDA_DEVICE_MAX_CONNECTIONS=1
  # A hung or failed collective raises instead of blocking the whole job until the time limit.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  # Tensor-parallel buffers are freed promptly instead of waiting for the caching allocator's streams.
  export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
  # InfiniBand retry timeout 4.096us * 2^22: large jobs survive transient fabric hiccups.
  export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
  # Only warnings in the logs; set NCCL_DEBUG=INFO to debug topology or hangs.
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  # Leave SMs free for overlapped communication kernels during layernorm (Transformer Engine).
  export NVTE_FWD_LAYERNORM_SM_MARGIN=${NVTE_FWD_LAYERNORM_SM_MARGIN:-16}
  export NVTE_BWD_LAYERNORM_SM_MARGIN=${NVTE_BWD_LAYERNORM_SM_MARGIN:-16}
}

# W&B: offline on compute nodes (no internet there); sync later with `wandb sync` from a login node.
mmed_wandb_env() {
  local save=$1
  export WANDB_MODE=${WANDB_MODE:-offline}
  export WANDB_DIR=${WANDB_DIR:-$save/wandb}
  if [[ -n "${WANDB_API_KEY:-}" ]]; then mmed_log "W&B: API key found in the environment (not shown)"; fi
}

# Run a single-task step: DRY_RUN=1 prints it; outside slurm the calling script submits itself (one node,
# GPUS_PER_NODE GPUs, WAIT=1 adds --wait); inside the batch job the command runs.
mmed_single_job() {
  local script=$1 name=$2
  shift 2
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "== megatron-mmed $name (dry run)"
    mmed_show "$@"
    return 0
  fi
  if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    command -v sbatch >/dev/null || mmed_die "sbatch not found: run this on a slurm login node (or DRY_RUN=1)"
    local sb=(sbatch "--job-name=mmed-$name" --nodes=1 --ntasks=1 "--gpus-per-node=${GPUS_PER_NODE:-1}"
      "--chdir=$(mmed_repo)" --export=ALL)
    [[ -n "${TIME_LIMIT:-}" ]] && sb+=("--time=$TIME_LIMIT")
    [[ -n "${PARTITION:-}" ]] && sb+=("--partition=$PARTITION")
    [[ -n "${ACCOUNT:-}" ]] && sb+=("--account=$ACCOUNT")
    [[ "${WAIT:-0}" == 1 ]] && sb+=(--wait)
    mmed_log "submitting: $(mmed_show "${sb[@]}" "$script")"
    exec "${sb[@]}" "$script"
  fi
  mmed_log "$(mmed_show "$@")"
  exec "$@"
}
