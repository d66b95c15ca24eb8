# make repro: set up .venv (once, again when pyproject.toml changes) and run the pipeline.
# make test:  the same setup, then the test suite.
# make check-repro: reproduce and compare with the committed results (exact: one machine).
# make tolerance: measure the reproduction tolerances under perturbed rounding (PROFILE, SET,
#   TARGETS (stages) and OUT measure other params or stages, RUNS picks the perturbations, e.g.
#   PROFILE=real MIRROR=folder TARGETS=reference_cls OUT=metrics/tolerance_real.json).
# make sweep: every strategy x seed as DVC experiments (README, "Sweeps"), then the comparison.
# make real MIRROR=folder: one experiment on the real data with the real-data profile.
# make full GPUS=N: one experiment at full size on a GPU machine (N data-parallel processes).
# make compare: the comparison of finished experiments (NAME, PROFILE, REV as for make sweep).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc runs each stage's `python` from PATH: put the project's environment first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test check-repro tolerance real full sweep compare

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest --durations=10

# Reproduce the pipeline and compare every deterministic metric with the committed results.
check-repro: $(STAMP)
	$(BIN)/python -m seqmtl.check --base HEAD --exact

tolerance: $(STAMP)
	$(BIN)/python -m seqmtl.tolerance $(PROFILE_SET) $(SET) $(addprefix --target ,$(TARGETS)) \
	  $(if $(OUT),--out $(OUT)) $(if $(RUNS),--runs $(RUNS))

# The real-data profile (README, "Real data"): per-stage image sizes, epochs and learning rates
# chosen by measurement on the real mirror, the gradient analysis on the whole training splits
# (96 images resolved |G|^2 in 0 of 21 task-snapshots of a derpp_frozen run, all in 10); the
# archives from MIRROR (a folder or URL) when given, else from the official hosts. PROFILE=real
# adds it to a sweep.
MIRROR ?=
SOURCE = -S data.source=download $(if $(MIRROR),-S data.mirror=$(if $(findstring ://,$(MIRROR)),$(MIRROR),$(abspath $(MIRROR))))
REAL = $(SOURCE) -S subsample.n_train=240 -S subsample.n_val=300 \
  -S stage1.image_size=256 -S stage1.epochs=16 -S stage1.lr=0.002 \
  -S stage2.image_size=320 -S stage2.epochs=48 -S stage2.lr=0.002 \
  -S stage3.image_size=224 -S stage3.epochs=10 -S stage3.lr=0.0005 \
  -S train.checkpoint_every=4 -S gradients.images=null
# The full-size profile for a GPU machine (README, "On a GPU, and at full size"): as many
# images per task as VOC's segmentation splits allow, 512 px, GPUS data-parallel processes.
# Unmeasured: no GPU run has measured its metrics or times yet. PROFILE=full adds it to a sweep.
GPUS ?= 1
FULL = $(SOURCE) -S subsample.n_train=1400 -S subsample.n_val=1400 -S train.processes=$(GPUS) \
  -S stage1.image_size=512 -S stage1.epochs=40 -S stage1.batch_size=32 \
  -S stage2.image_size=512 -S stage2.epochs=40 -S stage2.batch_size=32 -S stage2.lr=0.0005 \
  -S stage3.image_size=160 -S stage3.epochs=20 -S stage3.batch_size=32 -S stage3.lr=0.0005 \
  -S train.precision=bf16 -S train.checkpoint_every=10 -S gradients.images=200
PROFILE ?=
PROFILE_SET = $(if $(filter real,$(PROFILE)),$(REAL))$(if $(filter full,$(PROFILE)),$(FULL))
real: $(STAMP)
	$(BIN)/dvc exp run $(REAL) $(SET)

full: $(STAMP)
	$(BIN)/dvc exp run $(FULL) $(SET)

# Queue every (strategy, seed) pair as a DVC experiment and run the queue with DVC's own workers.
# One run per seed goes first, so that the strategy-independent stages (data, stage 1, the
# references) are computed once per seed and then restored from DVC's run cache by the others.
# SET adds params to every run (e.g. the real data); NAME names the comparison's outputs.
SEEDS ?= 0 1 2
STRATEGIES ?= naive replay ewc lwf derpp derpp_frozen gradnorm pcgrad uncertainty cumulative independent
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
	$(BIN)/python -m seqmtl.compare --name $(NAME) $(if $(REV),--rev $(REV)) $(PROFILE_SET) $(SET)
