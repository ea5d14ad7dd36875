"""`python -m deploy MODE`: the GPU Triton image's entrypoint (deploy/entrypoint.py)."""
import sys

from deploy.entrypoint import main

sys.exit(main())
