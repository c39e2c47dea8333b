#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh installs on a GPU machine that has a CUDA torch but not our
# packages (the device tool's image: Python 3.12, torch, transformers, safetensors, numpy, PyYAML, rich, psutil,
# xxhash are there). Run it where pip reaches PyPI; then carry the folder (the device tool: carry [".whl"]).
#
#   benchmarks/gpu_check_wheels.sh                 # -> .whl/ (git-ignored)
#   WHEELS=/tmp/w PYTHON_VERSION=3.10 benchmarks/gpu_check_wheels.sh
#   DRY_RUN=1 benchmarks/gpu_check_wheels.sh       # print the pip command only
#
# What `mmed train` and `mmed convert` import that such an image lacks, at the pins of requirements.txt:
#   megatron-core (its own needs, torch/numpy/packaging, are there), orjson and zstandard (megatron_mmed/common/io.py).
# Never torch: the machine's CUDA build is used. --no-deps: nothing else is pulled in.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PACKAGES=(megatron-core orjson zstandard)
for arg in "$@"; do
  case "$arg" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check_wheels.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
WHEELS=${WHEELS:-$REPO/.whl}
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x "$REPO/.venv/bin/python" ]]; then PY=$REPO/.venv/bin/python; else PY=python3; fi

specs=()
for name in "${PACKAGES[@]}"; do
  pin=$(grep -iE "^${name}==" "$REPO/requirements.txt" | head -n 1 | cut -d'#' -f1 | tr -d '[:space:]')
  [[ -n "$pin" ]] || { echo "gpu_check_wheels.sh: no exact pin for $name in requirements.txt" >&2; exit 2; }
  specs+=("$pin")
done
cmd=("$PY" -m pip download --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}"
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64 -d "$WHEELS" "${specs[@]}")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
mkdir -p "$WHEELS"
for name in "${PACKAGES[@]}"; do # one version of each: pip refuses two of the same package in one install
  rm -f "$WHEELS/${name//-/_}"-*.whl
done
"${cmd[@]}"
echo "wheels for gpu_check.sh in $WHEELS ($(du -sh "$WHEELS" | cut -f1)):"
ls -1 "$WHEELS"
