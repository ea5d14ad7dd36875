# Pixels vs encoded images to Triton (issue 19), see docs/perf.md "Pixels vs encoded".
#   make bench-encoded [ENCODED_ARGS="--seconds 6 --concurrency 1,8"]
# Starts its own tritonserver (zero-time stand-ins, the real decode step and pipelines) and
# three gateways; a few minutes. On a shared box: flock /work/heavy.lock make bench-encoded
ENCODED_ARGS ?=

.PHONY: bench-encoded

bench-encoded: setup  ## pixels vs encoded, one run: bytes to Triton (metric + kernel), gateway CPU, img/s, decode step, BLS orchestration
	$(PY) -m perf.bench_encoded $(ENCODED_ARGS)
