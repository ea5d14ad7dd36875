# Decoding: the gateway codec vs the DALI pipeline (pipelines/dali_letterbox.py), see docs/decode.md.
DECODE_BATCH ?=
DECODE_SECONDS ?= 3

.PHONY: bench-decode bench-decode-gpu decode-parity dali-model

bench-decode: setup  ## decode+letterbox img/s per core, codec vs DALI CPU, batch 1/8/32 (run it under `flock /work/heavy.lock` on a shared box)
	$(PY) -m perf.bench_decode --device cpu --stages --seconds $(DECODE_SECONDS) $(if $(DECODE_BATCH),--batch $(DECODE_BATCH))

bench-decode-gpu: setup  ## on a GPU host with DALI: the mixed (nvJPEG) decoder's img/s at batch 1-64
	$(PY) -m perf.bench_decode --device mixed --seconds $(DECODE_SECONDS) $(if $(DECODE_BATCH),--batch $(DECODE_BATCH))

decode-parity: setup  ## DALI letterbox vs the codec: pixel differences and detections on real weights (DEVICE=mixed on a GPU host)
	$(PY) -m perf.decode_parity --device $(or $(DEVICE),cpu) --filters

dali-model: setup  ## write a DALI letterbox model: make dali-model MODEL=yolo OUT=build/dali [DEVICE=mixed]
	@test -n "$(MODEL)" -a -n "$(OUT)" || { echo "usage: make dali-model MODEL=<model> OUT=<dir> [DEVICE=mixed|cpu]" >&2; exit 2; }
	$(PY) -m pipelines.dali_letterbox --model $(MODEL) --out $(OUT) --device $(or $(DEVICE),mixed)
