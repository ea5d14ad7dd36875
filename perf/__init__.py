"""perf_analyzer under memory caps, our own load generators, tuning sweeps and reports."""
