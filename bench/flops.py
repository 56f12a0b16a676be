"""Parameter and FLOP table (fvcore) for the eight models and the alpha sweep of paper Table 6,
beside the released code's counts and the papers' figures (the same as `sharpose flops`).

    python bench/flops.py
"""
from __future__ import annotations

import argparse

from sharpose.flops.table import flops_report


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(flops_report())


if __name__ == "__main__":
    main()
