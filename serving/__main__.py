"""`python -m serving {serve,run,derive}`: see serving/run.py."""
import sys

from .run import main

sys.exit(main())
