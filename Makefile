# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv (python3.11) and
# install the pinned requirements (torch through constraints.txt, so no CUDA build is ever pulled).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint format clean

# Debian packages for `mmed extract`: Tesseract with the six languages' packs (+ vertical Japanese) for scanned
# pages, and Noto CJK fonts for the tests' generated Chinese/Japanese PDFs. Installed when missing, as root, the
# way launch/local-slurm/start.sh installs slurm; without root or apt the OCR/CJK tests skip and say why.
SYSTEM_DEBS := tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim tesseract-ocr-jpn tesseract-ocr-jpn-vert \
	tesseract-ocr-fra tesseract-ocr-rus tesseract-ocr-spa fonts-noto-cjk

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python requirements.txt constraints.txt pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=$$(for p in $(SYSTEM_DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages for mmed extract:" $$missing; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } \
	      || echo "warning: apt-get install failed; the OCR and CJK extract tests will be skipped"; \
	  else echo "note: not installed (needs root and apt):" $$missing "- OCR/CJK extract tests will be skipped"; fi; \
	fi

demo: $(STAMP) system-deps
	$(BIN)/mmed demo --output demo_out

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Two test processes (pytest-xdist), one per core, each module in one process (`loadfile`: xdist 3.8's `loadgroup`
# silently stops grouping under pytest 9.2); the slurm modules first (the longest). PYTEST_ARGS="-n 0": one process.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

test: lint system-deps
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The developer loop: everything but the `slow` tests (multi-process, slurm, long training), under 3 minutes.
.PHONY: test-fast
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf demo_out .pytest_cache
