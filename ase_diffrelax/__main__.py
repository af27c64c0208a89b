"""``python -m ase_diffrelax`` is the ``ase-diffrelax`` command (also under torchrun)."""
import sys

from .cli import main

sys.exit(main())
