# Tests (docs/testing.md). `make test` is what CI runs; stages in this order, the first
# failure stops it (fail fast: a broken unit test shows in ~2 minutes, not after the
# integration suite):
#   lint (when the `lint` target exists)  ->  unit  ->  verify (the exported files)  ->  integration
#   make test-unit         tests/unit only: pure, in parallel over PYTEST_WORKERS processes
#   make test-integration  tests/integration (+ tests/gpu, skipped without CUDA): real processes
#   make test-load         the full-length load phases (overload, slot pool, soak, fleet
#                          discovery at its default period) that `make test` runs short
#   PYTEST_ARGS='-k fleet' passes arguments to every pytest run
PYTEST_ARGS ?=
# Unit tests are independent (no shared ports or files): two workers on a 2-core machine
# (measured side by side: 189 s at 2 workers, 226 s at 1; docs/testing.md).
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -ra --durations=25 $(PYTEST_ARGS)
# each stage's command once, run by its own target and by `test` (whose prerequisites
# already did setup and the export check: a sub-make would run the check again)
UNIT_TESTS = $(PYTEST) $(if $(filter-out 0 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS)) tests/unit
INTEGRATION_TESTS = $(PYTEST) tests/integration tests/gpu
# The full length of each load phase (seconds); `make test` runs the short defaults that
# tests/integration/load_budget.py states with the defect each one still catches.
LOAD_ENV := VISIONSERVE_OVERLOAD_S=60 VISIONSERVE_SLOT_POOL_S=120 VISIONSERVE_SOAK_TEST_S=60 \
	VISIONSERVE_FLEET_DISCOVERY_S=15 VISIONSERVE_ROLLING_RESTARTS=3

.PHONY: test test-unit test-integration test-load

test: setup export-onnx  ## lint, unit tests, verify, integration tests (what CI runs; ~10 min on 2 cores, docs/testing.md)
	@# perf_analyzer's Debian library needs root; without it those tests skip and say why.
	-@$(MAKE) --no-print-directory perf-setup
	@if $(MAKE) -n lint >/dev/null 2>&1; then $(MAKE) --no-print-directory lint; fi
	$(UNIT_TESTS)
	$(PY) -m export.verify --models '$(MODELS)'
	$(INTEGRATION_TESTS)

test-unit: setup  ## only the fast pure tests (tests/unit), PYTEST_WORKERS in parallel
	$(UNIT_TESTS)

test-integration: setup export-onnx  ## real tritonserver/gateway processes on loopback (+ tests/gpu)
	$(INTEGRATION_TESTS)

test-load: setup export-onnx  ## the load phases at full length (~8 min): overload, slot pool, soak, fleet discovery
	$(LOAD_ENV) $(PYTEST) -m load tests/integration
