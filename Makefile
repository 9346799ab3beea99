# make run   installs on first use (.venv: the full install, imagewise[all,weights,deploy,dev]), then runs the
#            main job end to end on built-in data
# make test  installs on first use, then lint, format check, the import layers, the public
#            API's types and the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint format bench clean

run: $(STAMP)
	$(BIN)/imagewise demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy tests/typecheck/public_api.py
	$(BIN)/python -m pytest -q

install: $(STAMP)

# Debian packages, best effort (needs root and apt): dataset-fashion-mnist gives real data
# offline; chromium lets the tests open the HTML report and the web page headless; postgresql
# gives the tune tests a real server to share a study in (each test starts its own cluster).
# onnxruntime-web's files (npm, checked against their sha512) are cached for --format web.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,weights,deploy,dev]'
	@# onnx2tf + TensorFlow for --format tflite, in an environment of their own (about 2.2 GB;
	@# imagewise.export.tflite): TensorFlow beside PyTorch crashes training
	$(BIN)/python -c 'from imagewise.export.tflite import converter_python; converter_python()' \
	  || echo "note: could not make the TFLite converter environment; the tflite tests are skipped"
	-@missing=""; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="dataset-fashion-mnist"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null 2>&1 \
	  || echo "note: could not install $$missing with apt-get; the tests that need them are skipped"; fi
	-@$(BIN)/python -c "from imagewise.export.onnxruntime_web import onnxruntime_web as f; f()" \
	  || echo "note: onnxruntime-web not cached; --format web will download it on first use"
	touch $(STAMP)

lint:
	$(BIN)/ruff check src tests benchmarks

format:
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
