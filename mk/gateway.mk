# The JPEG gateway (gateway/): run it alone against a Triton, and benchmark it.
#   make gateway TRITON_GRPC=127.0.0.1:8001      serve on GATEWAY_HOST:GATEWAY_PORT
#   make bench-gateway                           gateway vs the naive baseline, one run
#   make bench-gateway BENCH_ARGS=--stub-model   same, yolo replaced by an instant stub
#                                                (front ends alone, as with a GPU model)
TRITON_GRPC ?= 127.0.0.1:8001
GATEWAY_HOST ?= 127.0.0.1
GATEWAY_PORT ?= 8080
BENCH_SECONDS ?= 10
BENCH_ARGS ?=

.PHONY: gateway bench-gateway

gateway: setup  ## start the JPEG gateway alone against TRITON_GRPC (default 127.0.0.1:8001)
	$(PY) -m gateway --triton-grpc $(TRITON_GRPC) --host $(GATEWAY_HOST) --port $(GATEWAY_PORT)

bench-gateway: setup  ## gateway vs naive baseline on the same Triton/yolo: req/s, latency, CPU, bytes
	$(PY) -m export --models yolo
	$(PY) -m perf.bench_gateway --seconds $(BENCH_SECONDS) $(BENCH_ARGS)
