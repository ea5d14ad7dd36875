# MobileCLIP2-S2 encoders, clip_resize and the in-Triton CLIP tokenizer (see docs/mobileclip.md).
#   make export-clip        export the three graphs + the tokenizer vocabulary
#   make test-clip          their tests (tokenizer parity with open_clip, ONNX vs open_clip)
CLIP_MODELS := mobileclip_image,mobileclip_text,clip_resize

.PHONY: export-clip test-clip

export-clip: setup  ## export MobileCLIP2-S2 image/text encoders, clip_resize and the tokenizer vocabulary
	$(PY) -m export --models $(CLIP_MODELS)

test-clip: setup  ## tokenizer + MobileCLIP export tests (exports once, reuses up-to-date graphs)
	$(PY) -m pytest -ra tests/unit/test_clip_tokenizer.py tests/unit/test_export_mobileclip.py
