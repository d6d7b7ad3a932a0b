# Two commands do everything on a fresh machine: `make demo` and `make test`.
# TORCH pins the CPU build available locally on our 2-core machines; on a GPU machine use e.g. `make test TORCH=torch`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[train,test]"
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/bettervit models

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
