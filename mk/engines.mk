# TensorRT plans (issue 6): run on a GPU host with TensorRT (or trtexec), e.g. inside an
# NGC TensorRT/Triton container. See docs/engines.md.
#   make export-engines [MODELS=arcface,scrfd] [MAX_BATCH=16] [ENGINE_ARGS=--force]
#   make check-engines                        # are the plans Triton would load here usable?
MAX_BATCH ?=
ENGINE_ARGS ?=
ENGINES_CLI = $(PY) -m export.engines --models '$(MODELS)' $(if $(MAX_BATCH),--max-batch $(MAX_BATCH),) $(ENGINE_ARGS)

.PHONY: export-engines check-engines

export-engines: setup export-onnx  ## build FP16 TensorRT plans for tensorrt_plan models (MODELS=, MAX_BATCH=; needs a GPU + TensorRT)
	$(ENGINES_CLI)

check-engines: setup  ## check that the plans Triton would load on this GPU are current (no build)
	$(ENGINES_CLI) --check
