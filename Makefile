# nfstudy: every figure is `make <figure>`; see README.md.
#   make fig2                         paper profile, seed 0
#   make fig2 PROFILE=quick SEEDS="0 1 2"
#   make -j3 fig2 SEEDS="0 1 2"       the seeds in parallel, then one cross-seed figure
#   make -j4 fig1 SEEDS="0 1 2 3" GPUS=0,1,2,3   one seed per GPU
PROFILE ?= paper
SEEDS   ?= 0
DEVICE  ?= auto
DATASET ?=
PARAMS  ?=
GPUS    ?=
GPU_CHECK ?=
PYTHON  ?= python3
VENV    ?= .venv

# The quick profile's processes each use one torch thread (the committed gallery was made
# so, and on 2 shared cores one thread per process is several times faster than torch's
# default of one per core: benchmarks/README.md); set OMP_NUM_THREADS to override.
ifeq ($(PROFILE),quick)
export OMP_NUM_THREADS ?= 1
endif
# `make quick` runs this many figures at a time (default: one per core).
QUICK_JOBS ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)

PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NF    := $(PY) -m nfstudy

# A figure exists when its papermill template does: notebooks/<figure>.ipynb.
FIGURES := $(sort $(basename $(notdir $(wildcard notebooks/*.ipynb))))

.PHONY: help setup setup-system gpu-wheels gpu-pack gpu-check gpu-bench test quick quick-figs figs report bench lock clean $(FIGURES)
.DEFAULT_GOAL := help

help:
	@echo "make quick            every figure at small scale (offline, CPU, minutes)"
	@echo "make test             the test suite"
	@echo "make <figure>         one of: $(FIGURES)"
	@echo "                      PROFILE=$(PROFILE) SEEDS=\"$(SEEDS)\" DEVICE=$(DEVICE) GPUS=$(GPUS) DATASET=$(DATASET) PARAMS=\"$(PARAMS)\""
	@echo "make figs | report | bench | setup"
	@echo "make setup-system | gpu-check   a machine with its own CUDA torch, offline (docs/gpu.md)"
	@echo "NFSTUDY_RESULTS=/tmp/mine make ...  results there, not in the committed gallery results/"

setup: $(STAMP)

# The environment is rebuilt whenever the lock or the package metadata change.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# A machine whose Python already has a CUDA torch (>= 2.4) and no network (docs/gpu.md): a
# venv that sees the system's packages, the wheels of tools/gpu_wheels.sh from .whl/ (papermill
# and its kernel), and nfstudy itself; torch is never reinstalled.
setup-system:
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import sys, torch; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); \
	    sys.exit(0 if v >= (2, 4) else 'torch ' + torch.__version__ + ' is older than 2.4: install a newer CUDA torch first')"
	if ls .whl/*.whl >/dev/null 2>&1; then $(PY) -m pip install -q --no-index --no-deps .whl/*.whl; fi
	$(PY) -m pip install -q --no-index --no-deps --no-build-isolation -e .
	$(PY) -c "import papermill, ipykernel" || { echo "papermill is missing: run tools/gpu_wheels.sh where there is a network and copy .whl/ here (docs/gpu.md)"; exit 1; }
	touch $(STAMP)

# The wheels setup-system installs, downloaded where there is a network (Python 3.12, x86-64).
gpu-wheels:
	tools/gpu_wheels.sh .whl

# What a GPU session brings (docs/gpu.md): the wheels and Fashion-MNIST's files (data/fashion-mnist/).
gpu-pack:
	tools/gpu_session.sh pack

# One call on a GPU machine, <= 8 minutes: CUDA tests, every figure's paper profile at a
# reduced size (4 at a time on 16 cores), the training benchmark -> results/gpu_check/summary.json
# (nfstudy/gpu_check.py). Runs with the venv when there is one (setup-system), else with
# $(PYTHON) and this checkout.
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m nfstudy.gpu_check $(GPU_CHECK)

# The GPU benchmarks, bounded (fused N, landscape, AGC, torch.compile; ~4 minutes) ->
# results/gpu_session/{bench.jsonl,tables.md} (tools/gpu_session.sh bench; tools/bench_tables.py).
gpu-bench:
	PYTHON=$(GPU_PY) tools/gpu_session.sh bench results/gpu_session

# The suite, then its `numerics` tests (two code paths compared to a float32 tolerance) again
# under the portable kernels, so that no tolerance holds only on this CPU's SIMD (DEVELOPERS.md).
test: $(STAMP)
	$(PY) -m pytest -q
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m numerics

# One target per (figure, seed) so that `make -j` runs seeds in parallel; the figure
# target then draws the figure and the claims over every seed of the configuration it ran
# (the same DATASET and PARAMS name it: nfstudy/identity.py).
define FIGURE_RULES
$(1): $(addprefix $(1)-seed,$(SEEDS))
	$(NF) aggregate $(1) --profile $(PROFILE) $(if $(DATASET),--dataset $(DATASET)) $(PARAMS)
$(1)-seed%: $(STAMP)
	$(NF) run $(1) --profile $(PROFILE) --seed $$* --device $(DEVICE) $(if $(GPUS),--gpus $(GPUS)) $(if $(DATASET),--dataset $(DATASET)) --no-aggregate $(PARAMS)
endef
$(foreach f,$(FIGURES),$(eval $(call FIGURE_RULES,$(f))))

figs: $(FIGURES)

# Every figure's quick seed 0, QUICK_JOBS figures at a time in single-thread processes (fig1
# and agc also train their runs side by side: nfstudy/train/pool.py), the longest first
# (QUICK_FIRST, measured in benchmarks/README.md; the others follow in FIGURES order), each
# line prefixed with its figure, progress bars off; -k: a figure that fails does not stop
# the others, and fails `make quick` at the end.
QUICK_FIRST := fig1 fig3 agc
quick:
	NFSTUDY_OUTPUT_PREFIX=1 NFSTUDY_PROGRESS=$${NFSTUDY_PROGRESS:-0} $(MAKE) -k -j$(QUICK_JOBS) quick-figs PROFILE=quick

quick-figs: $(filter $(FIGURES),$(QUICK_FIRST)) $(filter-out $(QUICK_FIRST),$(FIGURES))

report: $(STAMP)
	$(NF) report

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# Re-resolve the stack in a scratch venv and write the exact versions back.
lock:
	rm -rf /tmp/nfstudy-lock && $(PYTHON) -m venv /tmp/nfstudy-lock
	/tmp/nfstudy-lock/bin/pip install -q torch==2.13.0 torchvision==0.28.0 pandas seaborn matplotlib \
	    jupyter papermill ipykernel scikit-learn tqdm pytest timm ruff submitit
	{ sed -n '/^#/p' requirements.lock; /tmp/nfstudy-lock/bin/pip freeze --all | grep -v '^pip=' \
	    | sed 's/+cpu$$//'; } > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info

# Anything else (a mistyped figure, `make fig9`): name it and list what there is, instead of
# make's bare "No rule to make target". .DEFAULT applies only where no rule does: files that
# exist are up to date, and the figures' seed targets (fig2-seed3) keep their pattern rule.
.DEFAULT:
	@echo "make: no target '$@' (nor a file of that name). Figures: $(FIGURES)." >&2
	@echo "      Targets: quick test report figs bench setup help; make <figure> PROFILE=quick SEEDS=\"0 1\"" >&2
	@exit 2
