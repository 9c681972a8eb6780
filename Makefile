# The two commands a newcomer types: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo stack-demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Two workers, one per core: compiling a step is single-threaded, so two compile at once. Tests of
# one file run in one worker (--dist loadfile), so its module fixtures are built once.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The whole LAG study (configs/demo.yaml); rerunning reuses every finished stage.
demo: $(STAMP)
	$(BIN)/laggrow run configs/demo.yaml
	@echo "report: runs/demo/report.md (figures: runs/demo/pool/correlation.png, curves.png, ranks.png)"

# Adaptive gradual stacking against gradual stacking, MIDAS and scratch (configs/stack-demo.yaml);
# rerunning continues an interrupted run and redoes nothing finished.
stack-demo: $(STAMP)
	$(BIN)/laggrow stack configs/stack-demo.yaml --out runs/stack-demo
	@echo "report: runs/stack-demo/report.md (figure: runs/stack-demo/stack.png)"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
