"""``--report DIR``: summary.json plus PNG plots of GPU memory and TTFT."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .memory import Timeline

log = logging.getLogger(__name__)
PHASE_COLORS = {"capture": "#f4a261", "serve": "#2a9d8f"}


def write_report(
    out_dir: str | Path,
    summary: dict[str, Any],
    ttft_s: list[float],
    timeline: Timeline | None,
    memory_unavailable: str | None,
) -> list[Path]:
    """Write summary.json, memory.png, ttft.png into ``out_dir``; returns the paths.

    The plots need matplotlib (the ``report`` extra): without it only summary.json is
    written, and a warning says how to get the plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "memory.png", out / "ttft.png"]
    paths[0].write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    try:
        import matplotlib
    except ImportError as e:
        log.warning("%s: summary.json only; the plots need `pip install graphbatch[report]`", e)
        return paths[:1]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    if timeline is not None and timeline.samples:
        t0 = timeline.samples[0].timestamp
        xs = [s.timestamp - t0 for s in timeline.samples]
        ax.plot(xs, [s.used / 2**30 for s in timeline.samples], label="device used")
        ax.plot(xs, [s.process_used / 2**30 for s in timeline.samples], label="this process")
        ends = [m[0] - t0 for m in timeline.marks[1:]] + [xs[-1]]
        for (ts, phase), end in zip(timeline.marks, ends, strict=True):
            ax.axvspan(ts - t0, end, alpha=0.15, color=PHASE_COLORS.get(phase, "grey"), label=phase)
        ax.set_xlabel("seconds")
        ax.set_ylabel("GiB")
        ax.legend(loc="lower right")
    else:
        ax.text(
            0.5,
            0.5,
            f"GPU memory: unavailable\n({memory_unavailable})",
            ha="center",
            va="center",
            wrap=True,
        )
        ax.set_axis_off()
    ax.set_title("GPU memory over the run")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if ttft_s:
        ax.hist([t * 1e3 for t in ttft_s], bins=min(30, max(5, len(ttft_s) // 2)))
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"Time to first token ({len(ttft_s)} requests)")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
