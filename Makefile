# The two commands of the README's quick start. Both set up first (scripts/setup.sh; quick when done).
PY := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)/bin/python

.PHONY: setup demo test
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m saecircuits demo $(ARGS)

test: setup
	$(dir $(PY))lint-imports --no-cache
	$(PY) -m pytest -q $(ARGS)
