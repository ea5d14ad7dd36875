"""HTTP gateway: JPEG/PNG in, binary uint8 tensors to Triton over one shared gRPC channel."""
