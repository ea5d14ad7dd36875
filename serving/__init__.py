"""Model repository contract, derived profiles (CPU, ONNX-GPU) and the embedded tritonserver."""
