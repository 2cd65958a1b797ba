# Two commands do all the set-up on a fresh machine:
#   make demo   - installs everything (first time), starts the sidecar and the demo game
#   make test   - installs everything (first time), runs the test suite
VENV ?= .venv
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo serve test lint bench install clean
demo: $(STAMP)
	$(VENV)/bin/python -m demo_game $(ARGS)

serve: $(STAMP)
	$(VENV)/bin/npc-engine serve $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check npc_engine demo_game tests bench scripts

bench: $(STAMP)
	$(VENV)/bin/npc-engine bench $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh

clean:
	rm -rf $(VENV) clients/node/node_modules
