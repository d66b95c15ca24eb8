# make repro: set up .venv (once, again when pyproject.toml or constraints.txt change; the exact
#   versions of constraints.txt) and run the pipeline.
# make test:  the same setup, then the test suite.
# make check-repro: reproduce and compare with the committed results (exact: one machine).
# make tolerance: measure the reproduction tolerances under perturbed rounding (PROFILE, SET,
#   TARGETS (stages) and OUT measure other params or stages, RUNS picks the perturbations, e.g.
#   PROFILE=real MIRROR=folder TARGETS=reference3 OUT=results/tolerances/tolerance_real.json).
# make sweep: every strategy x seed as DVC experiments (docs/strategies.md, "Sweeps"), then the comparison.
# make real MIRROR=folder: one experiment with the real-data profile (conf/profile/real.yaml).
# make full GPUS=N: one experiment with the full-size profile on a GPU machine (N processes).
# make compare: the comparison of finished experiments (NAME, PROFILE, REV as for make sweep).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc runs each stage's `python` from PATH: put the project's environment first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test check-repro tolerance real full sweep compare

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest --durations=10

# Reproduce the pipeline and compare every deterministic metric with the committed results.
check-repro: $(STAMP)
	$(BIN)/seqmtl check --base HEAD --exact

tolerance: $(STAMP)
	$(BIN)/seqmtl tolerance $(PROFILE_SET) $(SET) $(addprefix --target ,$(TARGETS)) \
	  $(if $(OUT),--out $(OUT)) $(if $(RUNS),--runs $(RUNS))

# Profiles are config groups (conf/profile/): a run records its `profile` as a param. MIRROR (a
# folder or URL) replaces the official hosts; PROFILE picks the profile of a sweep, a comparison
# or a tolerance measurement; SET adds -S overrides.
MIRROR ?=
MIRROR_SET = $(if $(MIRROR),-S data.mirror=$(if $(findstring ://,$(MIRROR)),$(MIRROR),$(abspath $(MIRROR))))
PROFILE ?=
PROFILE_SET = $(if $(PROFILE),-S profile=$(PROFILE)) $(MIRROR_SET)
GPUS ?= 1
real: $(STAMP)
	$(BIN)/dvc exp run -S profile=real $(MIRROR_SET) $(SET)

full: $(STAMP)
	$(BIN)/dvc exp run -S profile=full -S train.processes=$(GPUS) $(MIRROR_SET) $(SET)

# Queue every (strategy, seed) pair as a DVC experiment and run the queue with DVC's own workers.
# One run per seed goes first, so that the strategy-independent stages (data, stage 1, the
# references) are computed once per seed and then restored from DVC's run cache by the others.
# SET adds params to every run (e.g. the real data); NAME names the comparison's outputs.
SEEDS ?= 0 1 2
STRATEGIES ?= $(sort $(basename $(notdir $(wildcard conf/strategy/*.yaml))))
JOBS ?= 1
SET ?=
NAME ?= comparison
WAIT = while $(BIN)/dvc queue status | grep -qE "Running|Queued"; do sleep 20; done
sweep: $(STAMP)
	for seed in $(SEEDS); do $(BIN)/dvc exp run --queue $(PROFILE_SET) $(SET) -S seed=$$seed \
	  -S strategy=$(firstword $(STRATEGIES)); done
	$(BIN)/dvc queue start -j $(JOBS) && $(WAIT)
	for seed in $(SEEDS); do for strategy in $(wordlist 2,99,$(STRATEGIES)); do \
	  $(BIN)/dvc exp run --queue $(PROFILE_SET) $(SET) -S seed=$$seed -S strategy=$$strategy; \
	  done; done
	$(BIN)/dvc queue start -j $(JOBS) && $(WAIT)
	$(MAKE) --no-print-directory compare

# The comparison of the finished experiments queued on REV (default HEAD) with these settings.
REV ?=
compare: $(STAMP)
	$(BIN)/seqmtl compare --name $(NAME) $(if $(REV),--rev $(REV)) $(PROFILE_SET) $(SET)
