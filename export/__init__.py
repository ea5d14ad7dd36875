"""Export the model families to batch-dynamic ONNX, patch third-party graphs, build TensorRT plans."""
