"""FLOP accounting in one place: fvcore counts of our models (`counting`), the papers' figures and the
released code's counts (`published`), the table of `sharpose flops` (`table`) and the benchmark's cached
counts and FLOP arithmetic (`cache`)."""
from sharpose.flops.cache import FlopCounter, default_flop_cache, flop_ratio_limit, mean_gflops
from sharpose.flops.counting import count_gflops, count_params
from sharpose.flops.published import published_gflops
from sharpose.flops.table import flops_report

__all__ = [
    "FlopCounter",
    "count_gflops",
    "count_params",
    "default_flop_cache",
    "flop_ratio_limit",
    "flops_report",
    "mean_gflops",
    "published_gflops",
]
