# Everything a fresh machine needs, in one place.  `make demo` and `make test` are the
# two commands of the README; both set up the virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned, so that nothing later pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: data-jets-gq setup demo test test-all lint format data data-images data-ds2 data-ds3 data-jets clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	# wasserstein (energyflow's dependency) ships wheels built for numpy < 2 only: build it here
	# against numpy 2 (about 30 s), so that energyflow and onnx share one numpy.
	$(BIN)/pip install --quiet "numpy>=2" "setuptools>=68" wheel
	$(BIN)/pip install --quiet --no-cache-dir --no-build-isolation --no-binary wasserstein "wasserstein==1.0.1"
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

# The main job on the embedded defaults: the shipped CaloClouds II (CM) and CaloClouds II
# models, a fresh Geant4 sample and a Geant4 run with the default model as its fast
# simulation, all evaluated against the shipped Geant4 reference (Geant4 vs Geant4 shows
# the floor); report in out/demo/report.md. Then the cell-image models BIB-AE and L2LFlows beside
# the default on the 30 x 30 cells of ild-ecal-30 (out/demo_images), the voxel models (out/demo_ds2) and the EPiC
# jet models against the shipped Pythia 8 top jets (out/demo_jets).
REFERENCE := src/caloforge/assets/ild_reference.h5
DS2_REFERENCE := src/caloforge/assets/ds2_reference.h5
JETS_REFERENCE := src/caloforge/assets/jets_t30_reference.h5
JETS_G_REFERENCE := src/caloforge/assets/jets_g30_reference.h5
JETS_Q_REFERENCE := src/caloforge/assets/jets_q30_reference.h5
demo: setup
	mkdir -p out
	$(BIN)/caloforge info $(REFERENCE)
	$(BIN)/caloforge generate --model default --energies-file $(REFERENCE) -n 200 --seed 7 --overwrite --out out/demo_caloclouds2_cm.h5
	$(BIN)/caloforge generate --model caloclouds2 --energies-file $(REFERENCE) -n 200 --seed 7 --overwrite --out out/demo_caloclouds2.h5
	$(BIN)/caloforge simulate -n 100 --energy 10:90 --seed 7 --workers 2 --overwrite --out out/demo_geant4.h5
	$(BIN)/caloforge simulate --fast-sim default -n 100 --energy 10:90 --seed 7 --workers 2 --overwrite --out out/demo_fastsim.h5
	$(BIN)/caloforge evaluate $(REFERENCE) out/demo_caloclouds2_cm.h5 out/demo_caloclouds2.h5 out/demo_geant4.h5 out/demo_fastsim.h5 --out out/demo --overwrite
	$(BIN)/caloforge generate --model bibae --energies-file $(REFERENCE) -n 200 --seed 7 --overwrite --out out/demo_bibae.h5
	$(BIN)/caloforge generate --model l2lflows --energies-file $(REFERENCE) -n 200 --seed 7 --overwrite --out out/demo_l2lflows.h5
	$(BIN)/caloforge evaluate $(REFERENCE) out/demo_caloclouds2_cm.h5 out/demo_bibae.h5 out/demo_l2lflows.h5 --out out/demo_images --overwrite
	$(BIN)/caloforge generate --model calodream --energies-file $(DS2_REFERENCE) -n 300 --seed 7 --overwrite --out out/demo_calodream.h5
	$(BIN)/caloforge generate --model caloinn --energies-file $(DS2_REFERENCE) -n 300 --seed 7 --overwrite --out out/demo_caloinn.h5
	$(BIN)/caloforge evaluate $(DS2_REFERENCE) out/demo_calodream.h5 out/demo_caloinn.h5 --out out/demo_ds2 --overwrite
	$(BIN)/caloforge info $(JETS_REFERENCE)
	$(BIN)/caloforge generate --model epic-gan -n 1000 --seed 7 --workers 2 --overwrite --out out/demo_epic_gan.h5
	$(BIN)/caloforge generate --model epic-fm -n 1000 --seed 7 --workers 2 --overwrite --out out/demo_epic_fm.h5
	$(BIN)/caloforge generate --model epic-jedi -n 1000 --seed 7 --workers 2 --overwrite --out out/demo_epic_jedi.h5
	$(BIN)/caloforge evaluate $(JETS_REFERENCE) out/demo_epic_gan.h5 out/demo_epic_fm.h5 out/demo_epic_jedi.h5 --out out/demo_jets --overwrite
	$(BIN)/caloforge generate --model epic-fm-g30 -n 1000 --seed 7 --workers 2 --overwrite --out out/demo_epic_fm_g30.h5
	$(BIN)/caloforge evaluate $(JETS_G_REFERENCE) out/demo_epic_fm_g30.h5 --out out/demo_jets_g --overwrite
	$(BIN)/caloforge generate --model epic-fm-q30 -n 1000 --seed 7 --workers 2 --overwrite --out out/demo_epic_fm_q30.h5
	$(BIN)/caloforge evaluate $(JETS_Q_REFERENCE) out/demo_epic_fm_q30.h5 --out out/demo_jets_q --overwrite

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow" --timeout 7200

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: setup
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# The full ILD photon training and test sets (cached outside the repository; resumable).
DATA ?= $(HOME)/.cache/caloforge/data
data: setup
	mkdir -p $(DATA)
	$(BIN)/caloforge simulate -n 20000 --energy 10:90 --seed 1 --workers 2 --resume --out $(DATA)/ild_gamma_train.h5
	$(BIN)/caloforge simulate -n 10000 --energy 10:90 --seed 2 --workers 2 --resume --out $(DATA)/ild_gamma_test.h5

# The same showers as 30 x 30 x 30 cell images (ild-ecal-30) for BIB-AE and L2LFlows.
data-images: data
	$(BIN)/caloforge convert $(DATA)/ild_gamma_train.h5 --overwrite --out $(DATA)/ild30_gamma_train.h5
	$(BIN)/caloforge convert $(DATA)/ild_gamma_test.h5 --overwrite --out $(DATA)/ild30_gamma_test.h5

# CaloChallenge-dataset-2-like electron voxel showers for CaloDREAM and CaloINN (log-uniform 1-100 GeV).
data-ds2: setup
	mkdir -p $(DATA)
	$(BIN)/caloforge simulate --detector calochallenge-ds2 --particle e- --energy-log 1:100 -n 20000 --seed 11 --workers 2 --resume --out $(DATA)/ds2_train_points.h5 --voxel-out $(DATA)/ds2_train.h5
	$(BIN)/caloforge simulate --detector calochallenge-ds2 --particle e- --energy-log 1:100 -n 8000 --seed 12 --workers 2 --resume --out $(DATA)/ds2_test_points.h5 --voxel-out $(DATA)/ds2_test.h5

# CaloChallenge-dataset-3-like voxels (45 x 50 x 18) of the same stack for CaloDREAM-ds3: 16k training
# showers (about 40 min on two cores here) and 4k test showers written in both readouts from one
# simulation (ds3 for the figures, ds2 for comparisons on the same showers; about 12 min).
data-ds3: setup
	mkdir -p $(DATA)
	$(BIN)/caloforge simulate --detector calochallenge-ds3 --particle e- --energy-log 1:100 -n 16000 --seed 31 --workers 2 --resume --out $(DATA)/ds3_train_points.h5 --voxel-out $(DATA)/ds3_train.h5
	$(BIN)/caloforge simulate --detector calochallenge-ds2 --particle e- --energy-log 1:100 -n 4000 --seed 32 --workers 2 --resume --out $(DATA)/ds23_test_points.h5 --voxel-out calochallenge-ds3=$(DATA)/ds3_test.h5 --voxel-out $(DATA)/ds2_test_seed32.h5

# Top-quark jets from Pythia 8 + FastJet (150 leading constituents stored) for the EPiC models:
# 40k training and 10k test jets, 4.2 min on two cores here (10 ms of CPU per jet).
data-jets: setup
	mkdir -p $(DATA)
	$(BIN)/caloforge simulate-jets --type t -n 40000 --seed 31 --workers 2 --resume --out $(DATA)/jets_t_train.h5
	$(BIN)/caloforge simulate-jets --type t -n 10000 --seed 32 --workers 2 --resume --out $(DATA)/jets_t_test.h5

# Gluon and light-quark jets (QCD 2 -> 2), the same sizes and seeds as the top jets: about 21 ms
# (gluon) and 16 ms (quark) of CPU per jet, 7 min on two cores for all four files.
data-jets-gq: setup
	mkdir -p $(DATA)
	$(BIN)/caloforge simulate-jets --type g -n 40000 --seed 31 --workers 2 --resume --out $(DATA)/jets_g_train.h5
	$(BIN)/caloforge simulate-jets --type g -n 10000 --seed 32 --workers 2 --resume --out $(DATA)/jets_g_test.h5
	$(BIN)/caloforge simulate-jets --type q -n 40000 --seed 31 --workers 2 --resume --out $(DATA)/jets_q_train.h5
	$(BIN)/caloforge simulate-jets --type q -n 10000 --seed 32 --workers 2 --resume --out $(DATA)/jets_q_test.h5

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
