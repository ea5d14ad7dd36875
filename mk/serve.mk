# Serving: derive a profile's repository from model_repository/ and run the embedded Triton.
#   make serve                      Triton only (CPU profile), 127.0.0.1:8000/8001/8002 (contract/defaults.py)
#   make run                        Triton + the JPEG gateway on 127.0.0.1:8080 (its /metrics on :8081)
#   make derive PROFILE=onnx-gpu    only build build/repositories/onnx-gpu for a GPU Triton
#   SKIP_MISSING=1                  serve what is exported, leave out (and list) the rest
PROFILE ?= cpu
# ports and hosts: mk/defaults.mk (empty = contract/defaults.py's)
SERVE_ARGS = --profile $(PROFILE) $(call opt,--host,$(TRITON_HOST)) $(call opt,--http-port,$(HTTP_PORT)) \
	$(call opt,--grpc-port,$(GRPC_PORT)) $(call opt,--metrics-port,$(METRICS_PORT)) $(if $(SKIP_MISSING),--skip-missing)

.PHONY: serve run derive

serve: setup  ## start Triton on the derived repository (PROFILE=cpu; ports HTTP_PORT/GRPC_PORT/METRICS_PORT)
	$(PY) -m serving serve $(SERVE_ARGS)

run: setup export-onnx  ## export models, start Triton and the gateway (GATEWAY_PORT=8080); Ctrl-C stops both
	$(PY) -m serving run $(SERVE_ARGS) $(call opt,--gateway-port,$(GATEWAY_PORT)) \
	  $(call opt,--gateway-metrics-port,$(GATEWAY_METRICS_PORT))

derive: setup  ## build build/repositories/$(PROFILE) from model_repository/ (PROFILE=cpu|onnx-gpu)
	$(PY) -m serving derive --profile $(PROFILE)
