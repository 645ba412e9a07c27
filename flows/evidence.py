"""``python -m flows.evidence``: the evidence command line, kept as an alias of
``python -m flows.posterior`` (learned harmonic mean, McEwen et al. 2021, arXiv:2111.12720;
see ``flows.posterior.cli``)."""

import sys

from flows.posterior.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m flows.evidence"))
