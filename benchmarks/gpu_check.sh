#!/usr/bin/env bash
# One prepared GPU check of the CUDA path of `mmed train` (issue 16): a single H100/H200, under 8 minutes, with
# nothing but a Python that has a CUDA torch. Prints one summary table; exits 1 if any check FAILs.
#
#   benchmarks/gpu_check.sh                         # on a GPU node (or the device tool), from the repo root
#   RESULTS=benchmarks/results/gpu_check-h200 benchmarks/gpu_check.sh   # results.md/.json kept in the repo
#   DEVICE=cpu benchmarks/gpu_check.sh              # dry mode: same checks, tiny preset, fp32, fewer steps
# The device tool sets an OUT of its own that takes back 8 files at most: after benchmarks/gpu_check_wheels.sh
# here, run there with carry [".whl"] and timeout_s about 560:   RESULTS=$OUT OUT=/tmp/gc benchmarks/gpu_check.sh
#
# Checks (each prints PASS/FAIL/SKIP with its numbers):
#   1 train+resume   tiny preset, 30 steps bf16 (local spec); the same run stopped at step 15
#                    (train.exit_at_step) and resumed: losses equal to the uninterrupted run's
#   2 throughput     InternLM2-7B width, 4 layers, seq 4096, micro-batch 1, bf16, 20 steps: tokens/s,
#                    TFLOP/s per GPU (training/flops.py via metrics.jsonl), MFU against the GPU's bf16 peak
#   3 TE fp8         with transformer_engine importable: (2) with the TE spec in bf16, then precision.fp8=hybrid:
#                    TFLOP/s of both, loss within 2%; else "TE not available: FP8 not checked" (SKIP)
#   4 convert        `mmed convert mcore-to-hf` of (1) with the converter's own logits validation (megatron-core
#                    logits on the GPU, transformers' on CPU): max abs diff
# Knobs (environment): DEVICE (cuda | cpu), OUT (runs, logs, results.md, results.json; default a new temp dir),
#   RESULTS (a folder that also gets results.md and results.json, e.g. benchmarks/results/gpu_check-<gpu>),
#   PYTHON (default .venv/bin/python, else python3), WHEELS (folder of wheels installed when megatron-core,
#   orjson or zstandard is not importable; default .whl, filled by benchmarks/gpu_check_wheels.sh), SITE (where
#   they are installed, default /tmp/mmed-site). Never installs torch: the machine's CUDA torch is used.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
for arg in "$@"; do
  case "$arg" in
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (knobs are environment variables; see --help)" >&2; exit 2 ;;
  esac
done
cd "$REPO" || exit 2
DEVICE=${DEVICE:-cuda}
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || { echo "gpu_check.sh: DEVICE must be cuda or cpu" >&2; exit 2; }
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/mmed-gpu-check.XXXXXX")}
mkdir -p "$OUT/logs" && OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/checks.jsonl"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[[ "$DEVICE" == cpu ]] && export CUDA_VISIBLE_DEVICES=""
START=$SECONDS

# ---- carried wheels: megatron-core and the two compiled packages the training path imports (common/io.py)
if ! "$PY" -c "import megatron.core, orjson, zstandard" 2>/dev/null; then
  WHEELS=${WHEELS:-.whl}
  SITE=${SITE:-/tmp/mmed-site}
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  shopt -u nullglob
  if [[ ${#wheels[@]} == 0 ]]; then
    echo "gpu_check.sh: megatron-core/orjson/zstandard not importable and no wheels in $WHEELS" \
      "(run benchmarks/gpu_check_wheels.sh where pip reaches PyPI and carry that folder)" >&2
    exit 2
  fi
  echo "installing ${#wheels[@]} carried wheel(s) from $WHEELS into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${wheels[@]}" || exit 2
  export PYTHONPATH="$SITE:$PYTHONPATH"
else
  echo "megatron-core, orjson and zstandard importable: no wheels installed"
fi

# ---- helpers
GC=("$PY" -m benchmarks.gpu_check)
# run NAME CMD...: the command's output goes to OUT/logs/NAME.log; on failure its tail is shown
run() {
  local name=$1 log="$OUT/logs/$1.log" rc=0
  shift
  printf '$ %q ' "$@" >"$log" && echo >>"$log"
  echo "  running $name (log: $log)"
  "$@" >>"$log" 2>&1 || rc=$?
  if [[ $rc != 0 ]]; then
    echo "  $name failed (exit $rc); the end of its log:"
    tail -n 30 "$log" | sed 's/^/    | /'
  fi
  return $rc
}
record() { "${GC[@]}" record --out "$OUT" --check "$1" --status "$2" --detail "$3"; }
train() { run "$1" "$PY" -m megatron_mmed.cli train "${@:2}"; }

env_lines=$("${GC[@]}" env --out "$OUT" --mode "$DEVICE") || { echo "gpu_check.sh: environment check failed" >&2; exit 2; }
NAME=$(sed -n 's/^device_name=//p' <<<"$env_lines")
TE=$(sed -n 's/^transformer_engine=//p' <<<"$env_lines")
echo "== gpu_check: $NAME, DEVICE=$DEVICE, Transformer Engine ${TE:-not available}, OUT=$OUT"

if [[ "$DEVICE" == cuda ]]; then
  STEPS=30 EXIT=15 DTYPE=bf16 TINY_SEQ=128 BIG_STEPS=20
  BIG=(--config configs/train/internlm2_7b.yaml model.num_layers=4 model.seq_length=4096 parallel.tp=1
    parallel.sequence_parallel=false precision.dtype=bf16 train.micro_batch_size=1 train.global_batch_size=8
    optimizer.lr=3e-4 optimizer.min_lr=3e-5)
  BIG_VOCAB=92544 BIG_TOKENS=1000000
else # dry mode: the same steps on the tiny preset, fp32, fewer steps
  STEPS=8 EXIT=4 DTYPE=fp32 TINY_SEQ=64 BIG_STEPS=8
  BIG=(--config configs/train/tiny_cpu.yaml model.seq_length=128 precision.dtype=fp32)
  BIG_VOCAB=512 BIG_TOKENS=100000
fi
COMMON=(logging.log_interval=1 logging.eval_iters=0 data.split=100,0,0 schedule.warmup_steps=2)

# ---- data: learnable synthetic tokens (no tokenizer or corpus needed on the node)
run data-tiny "${GC[@]}" data "$OUT/data/tiny" --vocab 512 --tokens 200000 || { echo "no data" >&2; exit 1; }
run data-big "${GC[@]}" data "$OUT/data/big" --vocab "$BIG_VOCAB" --tokens "$BIG_TOKENS" || exit 1

# ---- check 1: tiny preset on the GPU, uninterrupted vs stopped at step EXIT and resumed
echo "== 1 train+resume: tiny preset, $STEPS steps $DTYPE, stopped at $EXIT and resumed"
t=$SECONDS
TINY=(--config configs/train/tiny_cpu.yaml "data.blend=$OUT/data/tiny/blend.json" "model.seq_length=$TINY_SEQ"
  model.spec=local "precision.dtype=$DTYPE" "train.steps=$STEPS" checkpoint.save_interval=1000 "${COMMON[@]}")
if train tiny-full "${TINY[@]}" "checkpoint.dir=$OUT/runs/tiny-full" &&
  train tiny-split-a "${TINY[@]}" "checkpoint.dir=$OUT/runs/tiny-split" "train.exit_at_step=$EXIT" &&
  train tiny-split-b "${TINY[@]}" "checkpoint.dir=$OUT/runs/tiny-split"; then
  "${GC[@]}" resume "$OUT/runs/tiny-full" "$OUT/runs/tiny-split" --exit-at "$EXIT" --out "$OUT"
else
  record "1 train+resume" FAIL "mmed train failed; see $OUT/logs/tiny-*.log"
fi
echo "   ($((SECONDS - t)) s)"

# ---- check 2: throughput of a reduced-depth 7B-width model (tiny on CPU)
echo "== 2 throughput: ${BIG[1]} ${BIG[*]:2}, $BIG_STEPS steps"
t=$SECONDS
BIGRUN=("${BIG[@]}" "data.blend=$OUT/data/big/blend.json" "train.steps=$BIG_STEPS" checkpoint.save=false "${COMMON[@]}")
if train big-bf16 "${BIGRUN[@]}" model.spec=local precision.fp8=null "checkpoint.dir=$OUT/runs/big-bf16"; then
  "${GC[@]}" throughput "$OUT/runs/big-bf16" --out "$OUT" --check "2 throughput" --label "local spec $DTYPE"
else
  record "2 throughput" FAIL "mmed train failed; see $OUT/logs/big-bf16.log"
fi
echo "   ($((SECONDS - t)) s)"

# ---- check 3: Transformer Engine bf16 vs fp8 hybrid (only where TE imports, with CUDA)
echo "== 3 TE fp8"
t=$SECONDS
if [[ -n "$TE" && "$DEVICE" == cuda ]]; then
  if train big-te-bf16 "${BIGRUN[@]}" model.spec=te precision.fp8=null "checkpoint.dir=$OUT/runs/big-te-bf16" &&
    train big-te-fp8 "${BIGRUN[@]}" model.spec=te precision.fp8=hybrid "checkpoint.dir=$OUT/runs/big-te-fp8"; then
    "${GC[@]}" fp8 "$OUT/runs/big-te-bf16" "$OUT/runs/big-te-fp8" --out "$OUT"
  else
    record "3 TE fp8" FAIL "mmed train with the TE spec failed; see $OUT/logs/big-te-*.log"
  fi
else
  echo "TE not available: FP8 not checked"
  record "3 TE fp8" SKIP "TE not available: FP8 not checked"
fi
echo "   ($((SECONDS - t)) s)"

# ---- check 4: conversion of check 1's run to HF, with the converter's logits validation
echo "== 4 convert mcore-to-hf of check 1's run"
t=$SECONDS
if [[ -f "$OUT/runs/tiny-full/latest" ]] &&
  run convert "$PY" -m megatron_mmed.cli convert mcore-to-hf --ckpt "$OUT/runs/tiny-full" --out "$OUT/hf" \
    --layout internlm2 --dtype "$DTYPE" --force; then
  "${GC[@]}" convert "$OUT/hf" --out "$OUT"
else
  record "4 convert mcore-to-hf" FAIL "no checkpoint from check 1, or the conversion failed; see $OUT/logs/convert.log"
fi
echo "   ($((SECONDS - t)) s)"

echo "== summary ($((SECONDS - START)) s)"
"${GC[@]}" table --out "$OUT"
rc=$?
if [[ -n "${RESULTS:-}" ]]; then
  mkdir -p "$RESULTS" && cp "$OUT/results.md" "$OUT/results.json" "$RESULTS"/ && echo "copied to $RESULTS"
fi
exit $rc
