"""PNG plots of a simulation report: latency distributions, success and replicas over time, storage fill.

matplotlib is an optional extra (``pip install 'aether-node[plots]'``): a node on a
phone has no use for it, so only this module imports it, and only when asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def write_plots(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write the run's plots into ``folder``; the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display is needed or wanted
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable("PNG plots need matplotlib: pip install 'aether-node[plots]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{report['scenario']}: {report['nodes']} nodes, seed {report['seed']}"
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for op, entry in report["operations"].items():
        samples = sorted(entry.get("samples_ms", []))
        if samples:
            ax.plot(samples, [(i + 1) / len(samples) for i in range(len(samples))], label=op)
    ax.set(xscale="log", xlabel="latency (ms)", ylabel="share of operations", title=f"Latency, {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    written.append(_save(fig, folder / "latency.png", plt))

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    success = report["success_over_time"]
    if success:
        top.plot([s["t"] for s in success], [s["fetch_success"] * 100 for s in success], marker="o")
    top.set(ylabel="fetch success (%)", ylim=(0, 101), title=f"Over time, {title}")
    replicas = report["replicas_over_time"]
    if replicas:
        t = [r["t"] for r in replicas]
        bottom.plot(t, [r["mean"] for r in replicas], label="mean replicas per pattern")
        bottom.plot(t, [r["min"] for r in replicas], label="fewest replicas of a pattern")
        alive = bottom.twinx()
        alive.plot(t, [r["alive"] for r in replicas], ":", color="gray", label="nodes alive")
        alive.set(ylabel="nodes alive", ylim=(0, max(r["alive"] for r in replicas) * 1.1))
        alive.legend(loc="lower right")
    bottom.set(xlabel="seconds after the network joined", ylabel="replicas", ylim=(0, None))
    bottom.legend(loc="lower left")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    written.append(_save(fig, folder / "over_time.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4))
    fill = report["storage_fill_percent"]
    classes = list(fill)
    x = range(len(classes))
    ax.bar([i - 0.2 for i in x], [fill[c]["p50"] for c in classes], width=0.4, label="median node")
    ax.bar([i + 0.2 for i in x], [fill[c]["p100"] for c in classes], width=0.4, label="fullest node")
    ax.set_xticks(list(x), [f"{c}\n({fill[c]['nodes']} nodes)" for c in classes])
    ax.set(ylabel="storage used (% of quota)", title=f"Storage fill, {title}")
    ax.legend()
    written.append(_save(fig, folder / "storage_fill.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
