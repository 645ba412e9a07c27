"""``python -m flows.posterior``: the evidence command line (see ``flows.posterior.cli``)."""

import sys

from flows.posterior.cli import main

sys.exit(main())
