# Developer commands (see README.md).
.PHONY: install demo test test-fast build env lint
install:
	pip install -e ".[test]"
demo:
	steu demo
test:
	python -m pytest -q
test-fast:
	python -m pytest -q -m "not slow"
build:
	python -m steu_ext.build
env:
	python -m steu_ext.env_report
lint:
	ruff check steu_ext tests benchmarks
