"""Writers of a result: the header and the Markdown table, the JSON file, and the plot of throughput
against exit rate."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharpose.benchmark.records import SIZES, BenchmarkResult, Record


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_ms(record: Record) -> str:
    if record.ms_per_batch is None:
        return "-"
    return f"{record.ms_per_batch:.1f} ({record.ms_min:.1f})"


def format_speedup(record: Record) -> str:
    if record.speedup_vs_vitpose is None:
        return "-"
    return f"{record.speedup_vs_vitpose:.2f} ({record.speedup_vs_vitpose_min:.2f})"


def format_exit(record: Record) -> str:
    if record.exit_rate is None:
        return "-"
    achieved = fmt(record.achieved_exit_rate, ".2f")
    return f"{record.exit_rate:.2f}" + ("" if achieved == f"{record.exit_rate:.2f}" else f" ({achieved})")


def format_header(result: BenchmarkResult) -> str:
    env = result.environment
    lines = [
        f"device: {env['device_name']} ({env['device']}), dtype {env['dtype']}, torch {env['torch']}, "
        f"triton {env['triton'] or '-'}, transformers {env['transformers'] or '-'}",
        f"date: {env['date_utc']}, commit {env['commit'] or '-'}, torch threads {env['torch_threads']}",
    ]
    if env["device"] == "cpu" and env.get("load_average_at_end"):
        start, end = (", ".join(f"{x:.1f}" for x in env[k]) for k in ("load_average_at_start", "load_average_at_end"))
        lines.append(f"load average (1, 5, 15 min) at start {start}, at end {end}, on {env['cpu_count']} cores: "
                     "other processes only add time, see the (min) figures")
    if result.settings.get("model_overrides"):
        lines.append(f"every model built with overrides {result.settings['model_overrides']} (not the named sizes)")
    return "\n".join(lines)


TABLE_COLUMNS = (
    "model", "backend", "mode", "budget", "batch", "exit rate (achieved)", "img/s", "ms/batch (min)", "peak MiB",
    "GFLOPs/img", "tokens/img", "speed-up vs ViTPose (min)", "FLOP-ratio limit", "status",
)


def format_table(records: Sequence[Record]) -> str:
    """Markdown table of the records (times and speed-ups: from the median round, and in brackets from
    the fastest); reasons of unavailable or failed rows are listed below it."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    reasons: list[str] = []
    for r in records:
        status = r.status
        if r.reason:
            reasons.append(r.reason)
            status += f" [{len(reasons)}]"
        cells = (
            r.model, r.backend, r.mode, r.token_budget or "-", str(r.batch_size), format_exit(r),
            fmt(r.img_per_s, ".1f"), format_ms(r), fmt(r.peak_mem_mib, ".0f"),
            fmt(r.gflops_per_image, ".2f"), fmt(r.tokens_per_image, ".1f"), format_speedup(r),
            fmt(r.flop_ratio_limit, ".2f"), status,
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"[{i}] {reason}" for i, reason in enumerate(reasons, 1)]
    return "\n".join(lines)


def write_json(result: BenchmarkResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")


def plot(result: BenchmarkResult, path: Path) -> None:
    """Throughput against exit rate, one panel per (size, resolution) and batch: SHaRPose per backend and
    mode, ViTPose (and the HF peer) as horizontal references, and the FLOP-ratio limit (ViTPose's
    throughput times the FLOP ratio) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.records if r.status == "ok"]
    panels = sorted({(r.size, r.resolution, r.batch_size) for r in ok},
                    key=lambda p: (SIZES.index(p[0]), p[1], p[2]))
    if not panels:
        raise ValueError("no successful records to plot")
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    for ax, (size, resolution, batch) in zip(axes.flat, panels):
        plot_panel(ax, [r for r in ok if (r.size, r.resolution, r.batch_size) == (size, resolution, batch)])
        ax.set_title(f"{size} {resolution}, batch {batch}")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    env = result.environment
    fig.suptitle(f"{env['device_name']}, {env['dtype']}, torch {env['torch']}, {env['date_utc']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_panel(ax: Any, records: list[Record]) -> None:
    rates = sorted({r.achieved_exit_rate for r in records if r.achieved_exit_rate is not None}) or [0.0, 1.0]
    span = (min(rates), max(rates)) if len(rates) > 1 else (rates[0] - 0.05, rates[0] + 0.05)
    for r in records:
        if r.family != "sharpose":
            style = "--" if r.family == "vitpose" else ":"
            name = "ViTPose" if r.family == "vitpose" else "HF VitPose"
            ax.hlines(r.img_per_s, *span, linestyles=style, colors="black" if r.family == "vitpose" else "gray",
                      label=f"{name} {r.backend} {r.mode}")
    series: dict[tuple, list[Record]] = {}
    for r in records:
        if r.family == "sharpose":
            series.setdefault((r.backend, r.mode, r.token_budget), []).append(r)
    for (backend, mode, budget), points in series.items():
        points.sort(key=lambda r: r.achieved_exit_rate)
        label = f"SHaRPose {backend} {mode}" + (f" {budget}" if budget != "fixed" else "")
        ax.plot([p.achieved_exit_rate for p in points], [p.img_per_s for p in points], "o-", label=label)
    limit = sorted((r for r in records if r.family == "sharpose" and r.flop_ratio_limit and r.mode == "eager"
                    and r.backend == "reference"), key=lambda r: r.achieved_exit_rate)
    vitpose = next((r for r in records if r.family == "vitpose" and r.mode == "eager"), None)
    if limit and vitpose is not None:
        ax.plot([r.achieved_exit_rate for r in limit], [vitpose.img_per_s * r.flop_ratio_limit for r in limit],
                "k-.", alpha=0.6, label="FLOP-ratio limit (ViTPose img/s x FLOP ratio)")
    ax.set_xlabel("exit rate (achieved)")
    ax.set_ylabel("images / s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
