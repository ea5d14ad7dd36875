# Fuzzing the image codec and the gateway's body parsers (issue 20). `make test` runs a
# bounded, derandomized hypothesis pass of the same properties; this is the long run:
# hypothesis randomized (FUZZ_EXAMPLES per property), then atheris (libFuzzer,
# coverage-guided over imaging/ and gateway/inputs.py) for FUZZ_RUNS inputs, each
# input bounded by libFuzzer's -rss_limit_mb and -timeout. Last, schemathesis against a
# running gateway (stand-ins of every route's models behind it): API_FUZZ_EXAMPLES
# randomized requests per operation and generation mode (positive, negative).
FUZZ_EXAMPLES ?= 20000
FUZZ_RUNS ?= 500000
API_FUZZ_EXAMPLES ?= 500

.PHONY: fuzz

fuzz: setup  ## long fuzzing of the codec, the body parsers and the API (FUZZ_EXAMPLES=, FUZZ_RUNS=, API_FUZZ_EXAMPLES=)
	$(PIP) install -q -c constraints.txt -e '.[fuzz]'
	VISIONSERVE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -s -p no:cacheprovider \
		tests/unit/test_imaging_fuzz.py tests/unit/test_gateway_inputs_fuzz.py
	$(PY) -m tests.unit.atheris_fuzz -runs=$(FUZZ_RUNS) -rss_limit_mb=2048 -timeout=10 \
		-print_final_stats=1 2>&1 | grep -v -e '^\[ WARN' -e '^libpng'
	VISIONSERVE_API_FUZZ_EXAMPLES=$(API_FUZZ_EXAMPLES) $(PY) -m pytest -q -s -p no:cacheprovider \
		tests/integration/test_gateway_api_fuzz.py
