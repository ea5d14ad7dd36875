# The JPEG gateway (gateway/): run it alone against a Triton, and benchmark it.
#   make gateway TRITON_GRPC=127.0.0.1:8001      serve on GATEWAY_HOST:GATEWAY_PORT
#   make bench-gateway                           gateway vs the naive baseline, one run
#   make bench-gateway BENCH_ARGS=--stub-model   same, yolo replaced by an instant stub
#                                                (front ends alone, as with a GPU model)
#   make bench-lean                              LeanRoute vs FastAPI's handler, same app
#   make bench-answers                           answer bytes and render CPU: JSON floats,
#                                                JSON base64, msgpack (real Triton outputs)
#   make bench-tracing                           tracing off vs on (sampled, unsampled), same app
#   make soak [SOAK_S=600]                       gateway + stand-in Triton at 0.7 x C: errors,
#                                                RSS, fds, shm slots before and after
# TRITON_GRPC, GATEWAY_HOST/PORT/METRICS_PORT, BENCH_SECONDS: mk/defaults.mk
BENCH_ARGS ?=
SOAK_S ?= 600

.PHONY: gateway bench-gateway bench-lean bench-answers bench-tracing soak

gateway: setup  ## start the JPEG gateway alone against TRITON_GRPC (default 127.0.0.1:8001)
	$(PY) -m gateway $(call opt,--triton-grpc,$(TRITON_GRPC)) $(call opt,--host,$(GATEWAY_HOST)) \
	  $(call opt,--port,$(GATEWAY_PORT)) $(call opt,--metrics-port,$(GATEWAY_METRICS_PORT))

bench-gateway: setup  ## gateway vs naive baseline on the same Triton/yolo: req/s, latency, CPU, bytes
	$(PY) -m export --models yolo
	$(PY) -m perf.bench_gateway $(call opt,--seconds,$(BENCH_SECONDS)) $(BENCH_ARGS)

bench-lean: setup  ## LeanRoute vs FastAPI's own handler on the same app, side by side: CPU us/request
	$(PY) -m perf.bench_lean

bench-answers: setup export-onnx  ## answer bytes and render CPU, JSON floats vs base64 vs msgpack, faces/embed x1/x16, one run
	$(PY) -m perf.bench_answers

bench-tracing: setup  ## the gateway's CPU us/request with tracing off vs on (sampled / unsampled), side by side
	$(PY) -m perf.bench_tracing

soak: setup  ## gateway + a fixed-time stand-in Triton at 0.7 x C for SOAK_S s (600): errors, RSS, fds, shm slots
	$(PY) -m perf.soak --seconds $(SOAK_S)
