# perf/: perf_analyzer under a memory cap, load generators, tuning (see docs/perf.md).
# Every target talks to a Triton (or gateway) already running on loopback (`make serve`,
# `make run`), except `tune`, which starts its own scratch servers.
TRITON_GRPC ?= 127.0.0.1:8001
TRITON_METRICS ?= http://127.0.0.1:8002/metrics
GATEWAY_URL ?= http://127.0.0.1:8080
BATCH ?= 1
CONCURRENCY ?= 1:16:4
MEM ?=
STABILITY ?= 10
BENCH_BATCH ?= 1,4
BENCH_CONCURRENCY ?= 1,4,16
BENCH_REQUESTS ?= 200
BENCH_SECONDS ?= 20
BENCH_MODELS ?= faces,detect_embed,text_embed,ocr,analyze
ROUTES ?= faces,detect,embed_image,embed_text,ocr,analyze
SLA_P95_MS ?= 500
PERF_MODELS := scrfd arcface yolo centernet centerface mobileclip_image mobileclip_text ppocr_det ppocr_rec \
	clip_resize face_align faces detect_embed text_embed ocr analyze

.PHONY: perf-setup perf bench-models bench-pipelines bench-ocr tune $(addprefix bench-,$(filter-out ocr,$(PERF_MODELS)))

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
	  --url $(TRITON_GRPC) --metrics-url $(TRITON_METRICS) --stability $(STABILITY) $(if $(MEM),--mem $(MEM))

bench-models: setup  ## async gRPC sweep of BENCH_MODELS (batch x concurrency) against a running Triton
	$(PY) -m perf.bench_models --models $(BENCH_MODELS) --batch $(BENCH_BATCH) \
	  --concurrency $(BENCH_CONCURRENCY) --requests $(BENCH_REQUESTS) --seconds $(BENCH_SECONDS) \
	  --url $(TRITON_GRPC) --metrics-url $(TRITON_METRICS)

# bench-<model> for every model but `ocr`: `make bench-ocr` is the OCR reading bench below
# (the ocr pipeline's throughput: make bench-models BENCH_MODELS=ocr)
BENCH_MODEL_TARGETS := $(addprefix bench-,$(filter-out ocr,$(PERF_MODELS)))
$(BENCH_MODEL_TARGETS): bench-%: setup
	$(PY) -m perf.bench_models --models $* --batch $(BENCH_BATCH) --concurrency $(BENCH_CONCURRENCY) \
	  --requests $(BENCH_REQUESTS) --seconds $(BENCH_SECONDS) --url $(TRITON_GRPC) --metrics-url $(TRITON_METRICS)

bench-pipelines: setup  ## HTTP single/burst/sustained through the gateway with an SLA verdict (SLA_P95_MS)
	$(PY) -m perf.bench_pipelines --url $(GATEWAY_URL) --routes $(ROUTES) --sla-p95-ms $(SLA_P95_MS)

bench-ocr: setup export-onnx  ## OCR on rendered lines: width buckets vs own width, crop height, 320-px chunks, rapidocr (no server)
	$(PY) -m perf.bench_ocr

tune: setup  ## sweep batching/instances in a scratch repo: make tune MODEL=yolo SLA_P95_MS=200
	@test -n "$(MODEL)" || { echo "usage: make tune MODEL=<model> SLA_P95_MS=<ms>" >&2; exit 2; }
	$(PY) -m perf.tune --model $(MODEL) --sla-p95-ms $(SLA_P95_MS)
