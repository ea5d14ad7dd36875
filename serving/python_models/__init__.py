"""Triton python-backend model files placed into derived repositories by serving/profiles.py.

They run inside Triton's python-backend stub (they import triton_python_backend_utils), so
nothing here is imported by the package itself; this file only makes installs ship them.
"""
