# The two commands of the README. Both install what they need themselves.
.PHONY: run test lint bench

run:
	scripts/setup.sh run
	scripts/libvirtd.sh
	.venv/bin/metavmm serve $(ARGS)

test:
	scripts/setup.sh test
	scripts/libvirtd.sh
	.venv/bin/ruff check metavmm tests bench
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check metavmm tests bench
	.venv/bin/lint-imports

bench:
	.venv/bin/python -m bench $(ARGS)
