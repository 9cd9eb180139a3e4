# pnca-book. On a fresh machine: `make book` or `make test`; both create .venv and install first.
#
#   make book [SIZE=ci|default|full]  execute every chapter headless into build/
#   make test                         run all tests (the book's chapters included)
#   make lab                          JupyterLab on the book: each chapter opens as a notebook
#   make notebooks                    plain notebooks (no outputs) in build/notebooks/ for Jupyter
#   make site                         HTML of the executed chapters in build/site/ (after make book)
#   make tune [JOBS=N]                re-run the learning-rate search behind config.CALIBRATED
#   make reproduce [JOBS=N]           the seeded grids on the embedded set into results/ (hours),
#                                     then make diagnostics: the pre-registered experiments
#                                     (JOBS: runs trained at once, one CPU thread each)
#   make bench                        benchmarks against faiss and pytorch-metric-learning
#   make clean / make distclean       remove build/ / build/ and .venv

PYTHON ?= python3
SIZE ?= default
JOBS ?= 1
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
STAMP := $(VENV)/.installed

.PHONY: setup test book notebooks lab references site tune reproduce diagnostics bench clean distclean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the versions the project is tested with; the rest comes from pyproject.toml.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest

book: setup
	$(PY) -m pnca_utils.book --size $(SIZE) --out $(BUILD)

notebooks: setup
	mkdir -p $(BUILD)/notebooks
	for chapter in book/[0-9][0-9]_*.py; do \
	  $(VENV)/bin/jupytext --quiet --to ipynb --output $(BUILD)/notebooks/$$(basename $$chapter .py).ipynb $$chapter \
	  || exit 1; \
	done

# JupyterLab on the book: each book/NN_*.py opens as a notebook (jupytext); the chapters find build/.
lab: setup
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp book/lab-settings.json $(VENV)/share/jupyter/lab/settings/overrides.json
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=book

# Reference outputs for nbval: every chapter at size ci; review the diff of book/reference/ like code.
references: setup
	$(PY) -m pnca_utils.book --references

site: setup
	$(PY) -m pnca_utils.book --site --out $(BUILD)

# Learning rates for the embedded set, chosen on held-out training classes (never the test classes).
tune: setup
	$(PY) -m pnca_utils tune --preset proxynca++ --size default --epochs 4 --quiet --jobs $(JOBS) \
	  --grid lr=4e-3,2e-2,1e-1 --grid proxy_lr=4e2,4e3 --out results/tuning/proxynca++
	$(PY) -m pnca_utils tune --preset proxynca --size default --epochs 4 --seeds 2 --quiet --jobs $(JOBS) \
	  --grid lr=1e-2,1e-1,0.5,1,2 --out results/tuning/proxynca
	$(PY) -m pnca_utils tune --preset nca --size default --epochs 4 --seeds 2 --quiet --jobs $(JOBS) \
	  --grid lr=4e-3,2e-2,1e-1,0.5 --out results/tuning/nca
	$(PY) -m pnca_utils tune --preset triplet --size default --epochs 4 --quiet --jobs $(JOBS) \
	  --grid lr=4e-3,2e-2,1e-1 --out results/tuning/triplet
	$(PY) -m pnca_utils tune --preset npair --size default --epochs 4 --quiet --jobs $(JOBS) \
	  --grid lr=4e-3,2e-2,1e-1 --out results/tuning/npair

# The ProxyNCA++ ablations at size converged, 5 seeds (80 runs, about 3.6 hours with JOBS=2 on 2 cores),
# the HDML comparison at size default, 3 seeds (what chapter 08 reads today), and at size converged,
# 5 seeds (20 runs, about 2.3 hours with JOBS=2; ProxyNCA++ beside it is the first grid's) and its hardness
# measurements; runs are
# cached in build/runs (shared with make book), an interrupted grid resumes from its runs.csv.
reproduce: setup
	$(PY) -m pnca_utils ablate --grid proxynca++ --dataset embedded --size converged --seeds 5 --jobs $(JOBS) \
	  --runs $(BUILD)/runs --out results/converged
	$(PY) -m pnca_utils ablate --grid hdml --dataset embedded --size default --seeds 5 --jobs $(JOBS) \
	  --runs $(BUILD)/runs --out results/embedded/hdml
	$(PY) -m pnca_utils ablate --grid hdml --dataset embedded --size converged --seeds 5 --jobs $(JOBS) \
	  --runs $(BUILD)/runs --out results/converged/hdml \
	  --variant Triplet --variant HDML-Triplet --variant N-pair --variant HDML-N-pair
	$(PY) results/diagnostics/hdml/measurements.py
	$(MAKE) diagnostics

# The diagnostics of results/diagnostics; each resumes. About 19 hours of run time summed
# over the runs (image scale 5 min, proxy assignment 1.5 h, fast proxies 1.6 h, its proxy-rate sweep about
# 2.3 h, its many-class design 3 h, the proxy-assignment follow-ups about 2.5 h after those (their
# included arms are fast proxies' runs, retrained once for their records), balanced batches 1.5 h for
# ProxyNCA++ and about 3.5 h for the triplet loss, HDML's J_avg switch about 3 h), so about 10 hours on
# 2 cores with JOBS=2.
diagnostics: setup
	$(PY) results/diagnostics/image-scale/run.py
	$(PY) results/diagnostics/proxy-assignment/run.py $(JOBS)
	$(PY) results/diagnostics/proxy-assignment/losses.py
	$(PY) results/diagnostics/fast-proxies/run.py $(JOBS)
	$(PY) results/diagnostics/fast-proxies/movement.py
	JOBS=$(JOBS) PY=$(PY) bash results/diagnostics/fast-proxies/sweep.sh
	$(PY) results/diagnostics/fast-proxies/run_many.py search $(JOBS)
	$(PY) results/diagnostics/fast-proxies/run_many.py $(JOBS)
	$(PY) results/diagnostics/proxy-assignment/run_regimes.py $(JOBS)
	$(PY) results/diagnostics/proxy-assignment/run_regimes.py records $(JOBS)
	$(PY) results/diagnostics/proxy-assignment/run_step_size.py $(JOBS)
	$(PY) results/diagnostics/balanced-batches/run.py $(JOBS)
	$(PY) results/diagnostics/balanced-batches/run.py triplet-search $(JOBS)
	$(PY) results/diagnostics/balanced-batches/run.py triplet $(JOBS)
	$(PY) results/diagnostics/hdml/run_javg.py $(JOBS)
	$(PY) results/diagnostics/hdml/measurements.py results/diagnostics/hdml/javg results/diagnostics/hdml/javg/measurements.csv

bench: setup
	$(PY) benchmarks/run.py --out results/benchmarks.json

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf $(VENV)
