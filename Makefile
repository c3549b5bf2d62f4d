# The two commands of the README: `make demo` and `make test`. Both set up first and are safe to re-run.
.PHONY: setup demo test bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/fab up --inventory inventory/netns --quiet
	.venv/bin/fab demo
	@echo "demo: the cluster is still up: . .venv/bin/activate; fab --list; fab down removes it"

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python -m bench

lint: setup
	.venv/bin/ruff check labnodes labkit tests bench fabfile.py

clean:
	rm -rf .venv build *.egg-info
