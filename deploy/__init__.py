"""The GPU Triton image's start-up logic (`python -m deploy`, docker/triton.Dockerfile) and the
scripts its image build runs: plans from the content-keyed plan store, the driver check,
the served repository, the weights report, the TensorRT version assertion.

Imports point down only: deploy -> export.engines (plans), serving (the tritonserver
command line). Heavy modules (onnx, tensorrt) load inside the functions that need them.
"""
