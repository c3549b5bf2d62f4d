# The two commands of the README: `make demo` and `make test`. Both set up first and are safe to re-run.
.PHONY: setup demo test bench lint clean vm-box vm-test scale-test

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/fab up --inventory inventory/netns --quiet
	.venv/bin/fab demo
	@echo "demo: the cluster is still up: . .venv/bin/activate; fab --list; fab down removes it"

# Two test processes at once, each running whole modules (tests/conftest.py says which must share one).
test: setup
	.venv/bin/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

bench: setup
	.venv/bin/python -m bench

lint: setup
	.venv/bin/ruff check labnodes labkit tests bench fabfile.py

# Vagrant (opt-in, slow): an offline Debian 12 libvirt box, and the whole cluster on VMs end to end.
vm-box: setup
	@bash scripts/libvirt-daemons.sh
	bash scripts/vm-box.sh

vm-test: setup
	@bash scripts/libvirt-daemons.sh
	.venv/bin/python scripts/vm-test.py

scale-test: setup
	.venv/bin/python scripts/scale-test.py

clean:
	rm -rf .venv build *.egg-info
