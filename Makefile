# `make demo` runs the offline demo, `make test` the test suite (which builds the docs site too);
# each sets itself up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test setup data

setup: $(VENV)/.installed data

# Reinstall only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,docs]'
	touch $@

# Debian's Fashion-MNIST package when we can install it (otherwise the data layer says so and
# falls back to the Hub copy of the dataset), Debian's fortunes, the offline English text, and
# WordNet's definitions (wordnet-base), the short-text classification task.
FORTUNES := /usr/share/games/fortunes/computers
WORDNET := /usr/share/wordnet/data.noun
DEBIAN_DATA := dataset-fashion-mnist fortunes wordnet-base
data:
	@if [ ! -f $(FMNIST) ] || [ ! -f $(FORTUNES) ] || [ ! -f $(WORDNET) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq $(DEBIAN_DATA) || (apt-get update -qq && apt-get install -y -qq $(DEBIAN_DATA))) >/dev/null \
	      || echo "could not install $(DEBIAN_DATA); Fashion-MNIST falls back to the Hub copy, the text sets are unavailable"; \
	  else echo "one of $(DEBIAN_DATA) is not installed and apt-get needs root"; fi; \
	fi

# The whole method where checkpoints matter: a teacher that memorises noisy labels, the default
# selector's snapshot against the final one over 3 paired student seeds. Resumable: a second run
# skips finished stages. The Fashion-MNIST default without label noise: recipes/fashion_mnist.yaml.
demo: setup
	$(BIN)/hf-ckptkd run recipes/fashion_mnist_memorise.yaml --output_dir runs/demo

# Two workers, each test file on one of them (its module fixtures are built once).
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
