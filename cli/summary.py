"""The end-of-run summary of ``graphbatch run``: a dict (summary.json) and a table."""

from __future__ import annotations

from typing import Any

import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.serving import RunStats, percentile


def _ms(xs: list[float], q: float | None = None) -> float | None:
    if not xs:
        return None
    v = float(np.mean(xs)) if q is None else percentile(xs, q)
    return round(1e3 * v, 2)


def summarize(stats: RunStats, ex: GraphExecutor, args, peak: str, total: int) -> dict[str, Any]:
    ms = [t * 1e3 for t in stats.ttft_s]
    lat, dttft = stats.transfer_latency_s, stats.decode_ttft_s
    return {
        "backend": ex.backend.name,
        "device": ex.backend.device,
        "model": args.model,
        "cuda_graphs": ex.use_cuda_graph,
        "requests": stats.requests,
        "requests_failed": len(stats.failed),
        "requests_planned": total,
        "prompt_tokens": stats.prompt_tokens,
        "computed_tokens": stats.computed_tokens,
        "prefix_cache": not args.no_prefix_cache,
        "prefix_hit_rate": round(stats.prefix_hit_rate, 4),
        "steps": stats.steps,
        "time_s": round(stats.wall_s, 3),
        "tokens_per_s": round(stats.prompt_tokens / stats.wall_s, 1) if stats.wall_s else 0.0,
        "ttft_ms_mean": round(sum(ms) / len(ms), 2) if ms else None,
        "ttft_ms_p50": round(percentile(ms, 50), 2) if ms else None,
        "ttft_ms_p90": round(percentile(ms, 90), 2) if ms else None,
        "padding_waste_pct": round(100 * stats.padding_waste, 2),
        "first_token_logprob_mean": (
            round(float(np.mean(stats.first_token_logprobs)), 4)
            if stats.first_token_logprobs
            else None
        ),
        "transfer": args.transfer,
        "transfer_verified": bool(args.transfer == "nixl" and args.verify_transfer),
        "transfer_bytes": stats.transfer_bytes,
        "transfer_gbps": round(stats.transfer_gbps, 4),
        "transfer_ms_p50": _ms(lat, 50),
        "transfer_ms_p90": _ms(lat, 90),
        "decode_ttft_ms_mean": _ms(dttft),
        "decode_ttft_ms_p50": _ms(dttft, 50),
        "decode_ttft_ms_p90": _ms(dttft, 90),
        "graph_replays": {str(k): v for k, v in sorted(ex.replays.items())},
        "eager_runs": {str(k): v for k, v in sorted(ex.eager_runs.items())},
        "graph_memory_bytes": {str(k): v for k, v in sorted(ex.graph_memory.items())},
        "peak_gpu_memory": peak,
    }


def print_table(summary: dict[str, Any]) -> None:
    rows = [
        ("backend / device", f"{summary['backend']} / {summary['device']}"),
        ("requests", f"{summary['requests']} done, {summary['requests_failed']} failed"),
        ("prompt tokens", summary["prompt_tokens"]),
        (
            "prefix cache hit rate",
            f"{100 * summary['prefix_hit_rate']:.1f} % "
            f"({summary['computed_tokens']} tokens computed)"
            + ("" if summary["prefix_cache"] else " [--no-prefix-cache]"),
        ),
        ("steps", summary["steps"]),
        ("time", f"{summary['time_s']:.2f} s"),
        ("tokens/s", summary["tokens_per_s"]),
        (
            "TTFT mean / P50 / P90",
            f"{summary['ttft_ms_mean']} / {summary['ttft_ms_p50']} / {summary['ttft_ms_p90']} ms",
        ),
        ("KV transfer", _transfer_row(summary)),
        (
            "decode-side TTFT mean / P50 / P90",
            f"{summary['decode_ttft_ms_mean']} / {summary['decode_ttft_ms_p50']} / "
            f"{summary['decode_ttft_ms_p90']} ms"
            if summary["transfer"] == "nixl"
            else "n/a (--transfer none)",
        ),
        ("padding waste", f"{summary['padding_waste_pct']} %"),
        ("first-token logprob mean", summary["first_token_logprob_mean"]),
        ("graph replays per bucket", summary["graph_replays"] or "none (eager)"),
        ("eager runs per bucket", summary["eager_runs"] or "none"),
        ("GPU memory", summary["peak_gpu_memory"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def _transfer_row(summary: dict[str, Any]) -> str:
    if summary["transfer"] != "nixl":
        return "simulated (--transfer none): blocks freed after the first token"
    return (
        f"NIXL, {summary['transfer_bytes'] / 2**20:.1f} MiB at {summary['transfer_gbps']} GB/s, "
        f"latency P50 / P90 {summary['transfer_ms_p50']} / {summary['transfer_ms_p90']} ms"
        + (", checksums verified" if summary["transfer_verified"] else "")
    )
