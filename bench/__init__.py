"""The run-path benchmark: `make bench` (see bench/README.md). Never part of the tests."""
