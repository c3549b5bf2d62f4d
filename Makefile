# The two commands of the README: `make demo` and `make test`. Both set up first and are safe to re-run.
.PHONY: setup demo test bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python -m labkit.demo

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python -m bench

lint: setup
	.venv/bin/ruff check labnodes labkit tests bench fabfile.py

clean:
	rm -rf .venv build *.egg-info
