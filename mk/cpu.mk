# CPU runtime benchmark and the GPU compute-ceiling tool (docs/perf.md).
#   make bench-cpu [BENCH_CPU_MODELS=scrfd,yolo] [BENCH_CPU_PIPELINES=faces] [BENCH_CPU_SECONDS=4]
#   make gpu-ceiling [CEILING_OUT=gpu_ceiling.json] [CEILING_BUDGET_S=420] [CEILING_FAMILIES=arcface,yolo]
BENCH_CPU_MODELS ?=
BENCH_CPU_PIPELINES ?=
BENCH_CPU_SECONDS ?= 4
CEILING_OUT ?= build/gpu_ceiling.json
CEILING_BUDGET_S ?= 420
CEILING_FAMILIES ?=
# the ceiling tool runs on a GPU host's own python when the project's venv is not there
CEILING_PY ?= $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: bench-cpu gpu-ceiling

bench-cpu: setup export-onnx  ## bare OpenVINO/ORT vs served Triton (default and baseline settings), one run; needs a quiet machine
	$(PY) -m perf.bench_cpu $(if $(BENCH_CPU_MODELS),--models $(BENCH_CPU_MODELS)) \
	  $(if $(BENCH_CPU_PIPELINES),--pipelines $(BENCH_CPU_PIPELINES)) --seconds $(BENCH_CPU_SECONDS)

gpu-ceiling:  ## GPU compute ceiling per network (FP16, CUDA graphs, batch 1..64) + GPU JPEG decode; table + JSON
	$(CEILING_PY) -m perf.gpu_ceiling --out $(CEILING_OUT) --budget-s $(CEILING_BUDGET_S) \
	  $(if $(CEILING_FAMILIES),--families $(CEILING_FAMILIES))
