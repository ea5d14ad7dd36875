"""What tests share, in one place (test modules import from here, never from each other):

    images     JPEG/PNG encoding, noise and flat frames, rendered text pages
    boxes      IoU (export.boxes.iou_matrix) with any box layout
    polling    wait_for / eventually: a condition polled within a bound, never a fixed sleep
    triton     the one way to start a tritonserver in tests, its statistics and metrics,
               one infer call for both protocols, the stand-in repository
    gateway    the one way to start `python -m gateway` in tests, and its metrics read back
    exports    exported models and their provenance (real or synthetic weights)
    dns        a DNS server on loopback standing for a headless Service
    otlp       an OTLP/HTTP trace receiver on loopback (protobuf and JSON bodies)
"""
