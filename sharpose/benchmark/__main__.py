"""`python -m sharpose.benchmark`: the throughput benchmark's command line (the same as bench/throughput.py)."""
from sharpose.benchmark.cli import main

raise SystemExit(main(prog="python -m sharpose.benchmark"))
