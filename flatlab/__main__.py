"""``python -m flatlab``: the command line (so ``torchrun -m flatlab run ...`` works)."""

import sys

from flatlab.cli import main

sys.exit(main())
