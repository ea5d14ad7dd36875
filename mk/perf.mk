# perf/: perf_analyzer under a memory cap, load generators, tuning (see docs/perf.md).
# Every target talks to a Triton (or gateway) already running on loopback (`make serve`,
# `make run`), except `tune`, which starts its own scratch servers.
# TRITON_GRPC, TRITON_METRICS, GATEWAY_URL, BENCH_SECONDS: mk/defaults.mk (empty = the tools' defaults)
BATCH ?= 1
CONCURRENCY ?= 1:16:4
MEM ?=
STABILITY ?= 10
BENCH_BATCH ?= 1,4
BENCH_CONCURRENCY ?= 1,4,16
BENCH_REQUESTS ?= 200
# empty: every pipeline of the contract (bench-models), every route model (bench-pipelines)
BENCH_MODELS ?=
ROUTES ?=
SLA_P95_MS ?= 500
# every model of the contract: one config folder each
PERF_MODELS := $(sort $(patsubst model_repository/%/config.pbtxt,%,$(wildcard model_repository/*/config.pbtxt)))

.PHONY: perf-setup perf bench-cache bench-models bench-pipelines bench-ocr tune $(addprefix bench-,$(filter-out ocr,$(PERF_MODELS)))

# libb64-0d is a Debian package: installed with apt when root, else we say what to run.
perf-setup: setup  ## install what perf_analyzer needs (libb64-0d via apt, libcudart from PyPI); idempotent
	@if ! ldconfig -p | grep -q 'libb64.so.0d'; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y --no-install-recommends libb64-0d >/dev/null \
	    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends libb64-0d >/dev/null; }; \
	  else echo "perf-setup: run as root: apt-get install -y libb64-0d" >&2; exit 1; fi; fi
	@$(PY) -c "import perf.analyzer as a, sys; m = a.missing(); print('\n'.join(m) or 'perf_analyzer ready: ' + str(a.binary())); sys.exit(1 if m else 0)"

perf: perf-setup  ## perf_analyzer, memory-capped: make perf MODEL=yolo [BATCH=1] [CONCURRENCY=1:16:4] [MEM=4G]
	@test -n "$(MODEL)" || { echo "usage: make perf MODEL=<model> [BATCH=..] [CONCURRENCY=s:e:step] [MEM=4G]" >&2; exit 2; }
	$(PY) -m perf.analyzer --model $(MODEL) --batch $(BATCH) --concurrency $(CONCURRENCY) \
	  $(call opt,--url,$(TRITON_GRPC)) $(call opt,--metrics-url,$(TRITON_METRICS)) --stability $(STABILITY) $(if $(MEM),--mem $(MEM))

bench-cache: setup export-onnx  ## Triton's response cache: hit vs miss p50/p95 (caption, photo), 30%-repeat replay with the cache on vs off, one run
	$(PY) -m perf.bench_cache

bench-models: setup  ## async gRPC sweep of BENCH_MODELS (batch x concurrency) against a running Triton
	$(PY) -m perf.bench_models $(call opt,--models,$(BENCH_MODELS)) --batch $(BENCH_BATCH) \
	  --concurrency $(BENCH_CONCURRENCY) --requests $(BENCH_REQUESTS) $(call opt,--seconds,$(BENCH_SECONDS)) \
	  $(call opt,--url,$(TRITON_GRPC)) $(call opt,--metrics-url,$(TRITON_METRICS))

# bench-<model> for every model but `ocr`: `make bench-ocr` is the OCR reading bench below
# (the ocr pipeline's throughput: make bench-models BENCH_MODELS=ocr)
BENCH_MODEL_TARGETS := $(addprefix bench-,$(filter-out ocr,$(PERF_MODELS)))
$(BENCH_MODEL_TARGETS): bench-%: setup
	$(PY) -m perf.bench_models --models $* --batch $(BENCH_BATCH) --concurrency $(BENCH_CONCURRENCY) \
	  --requests $(BENCH_REQUESTS) $(call opt,--seconds,$(BENCH_SECONDS)) \
	  $(call opt,--url,$(TRITON_GRPC)) $(call opt,--metrics-url,$(TRITON_METRICS))

bench-pipelines: setup  ## HTTP single/burst/sustained through the gateway with an SLA verdict (SLA_P95_MS)
	$(PY) -m perf.bench_pipelines $(call opt,--url,$(GATEWAY_URL)) $(call opt,--routes,$(ROUTES)) --sla-p95-ms $(SLA_P95_MS)

bench-ocr: setup export-onnx  ## OCR on rendered lines: width buckets vs own width, crop height, 320-px chunks, rapidocr (no server)
	$(PY) -m perf.bench_ocr

tune: setup  ## sweep batching/instances in a scratch repo: make tune MODEL=yolo SLA_P95_MS=200
	@test -n "$(MODEL)" || { echo "usage: make tune MODEL=<model> SLA_P95_MS=<ms>" >&2; exit 2; }
	$(PY) -m perf.tune --model $(MODEL) --sla-p95-ms $(SLA_P95_MS)
