# One venv per checkout; every target installs what it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export KUBERAY_SCHEMA_DIR ?= $(abspath ../shared/schemas/kuberay)
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1

.PHONY: install test-deps lint test test-fast demo bench-cpu bench-gpu bench-gpu-pipeline bench-qa-cost bench-qa-cost-gpu bench-full-res train-tiny train-tiny-ablations clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# a current pip: older resolvers give up on this project's extras (ray[data] + s3fs pin fsspec)
	$(BIN)/pip install -q --upgrade "pip>=25"
	# torch first: the CPU build lies on local disk; a bare requirement would pull a CUDA build
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[pipeline,test]"
	touch $@

install: $(BIN)/.installed

# system packages the browser tests use (Debian's chromium; as root). `make test` never changes the system:
# without a browser those tests skip and say how to get one
test-deps:
	# an image whose package database was left half-configured refuses every install until this runs
	DEBIAN_FRONTEND=noninteractive dpkg --configure -a
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/python -m pytest -q tests
	# the simulated two-node cluster needs a process of its own (see tests/conftest.py)
	$(BIN)/python -m pytest -q tests/test_cluster.py

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: install
	$(BIN)/python -m jobs.cli demo

bench-cpu: install
	$(BIN)/python -m bench.pipeline

bench-gpu:
	python3 -m bench.engine --device cuda

# the real `mgie-batch edit` on one GPU beside the engine and the stock batch-8 path (docs/performance.md)
bench-gpu-pipeline:
	python3 -m bench.pipeline_gpu

# mgie-tiny from scratch: procedural data, autoencoder, MGIE objective, sampler settings on a validation split,
# export to models/mgie-tiny, held-out checks (docs/training.md; on a GPU: python3 -m bench.train_tiny --device cuda)
train-tiny: install
	$(BIN)/python -m bench.train_tiny --device cpu

# the paper's ablations in miniature: e2e, ft, fz, lgie, no-ins on a shorter schedule from the same autoencoder,
# sampled with the shipped model's settings, judged by the same held-out checks (docs/training.md)
train-tiny-ablations: install
	$(BIN)/python -m bench.train_tiny --device cpu --ablations e2e,ft,fz,lgie,no-ins --steps 150 \
		--runs ablations-150 --export "" --sampler models/mgie-tiny --results runs/mgie-tiny-ablations

# what auto-QA adds to the edit stage: QA off vs on, same batch, same run (docs/performance.md "Auto-QA cost")
bench-qa-cost: install
	$(BIN)/python -m bench.qa_cost

bench-qa-cost-gpu:
	python3 -m bench.qa_cost --device cuda --model mgie-7b --clip vit-l-14 --steps 20 --batch-size 8 --warmup

# the full-size output path (2, 12 and 48 MP JPEGs through `mgie-batch edit`) against a plain PIL loop
# (docs/performance.md "The output path")
bench-full-res: install
	$(BIN)/python -m bench.full_res

clean:
	rm -rf $(VENV) demo-output
