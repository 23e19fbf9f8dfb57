"""The end-of-run summary of ``graphbatch run``: a dict (summary.json) and a table."""

from __future__ import annotations

from typing import Any

import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.kernels._runtime import CPU_KERNELS_ENV, cpu_kernels, kernel_path
from graphbatch.scheduler.workload import Turn
from graphbatch.serving import EngineStats, PrefillEngine

from .chat_driver import ChatStats

SHOWN_REQUESTS = 4  # requests whose message and first token the run prints


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _ms(xs: list[float], q: float | None = None) -> float | None:
    if not xs:
        return None
    v = float(np.mean(xs)) if q is None else percentile(xs, q)
    return round(1e3 * v, 2)


def kernels_used(ex: GraphExecutor) -> str:
    """Which kernel path ran, and what chose it."""
    path = kernel_path("cuda" if ex.backend.is_cuda else "cpu")
    if ex.backend.is_cuda:
        return "triton (GPU)"
    return f"{path} ({CPU_KERNELS_ENV}={cpu_kernels()})"


def request_details(sessions: list[list[Turn]], stats: ChatStats) -> list[dict[str, Any]]:
    """Per planned request: its prompt ids (as submitted: with the decode side's earlier
    replies in it), user message, temperature, first token and the decode side's
    continuation."""
    out = []
    for turns in sessions:
        for t in turns:
            rid = t.request.request_id
            decoded = stats.decoded.get(rid)
            out.append(
                {
                    "request_id": rid,
                    "user_message": t.text,
                    "prompt_token_ids": stats.prompts.get(rid, list(t.request.prompt_token_ids)),
                    "temperature": t.request.sampling.temperature,
                    "first_token_id": stats.first_tokens.get(rid),
                    "decoded_token_ids": None if decoded is None else list(decoded),
                }
            )
    return out


def summarize(
    stats: ChatStats,
    engine: PrefillEngine,
    peak: str,
    total: int,
    sessions: list[list[Turn]],
    verified: tuple[int, list] | None = None,
) -> dict[str, Any]:
    ms = [t * 1e3 for t in stats.ttft_s]
    lat, dttft = stats.transfer_latency_s, stats.decode_ttft_s
    ex, cfg = engine.executor, engine.config
    es: EngineStats = stats.engine if stats.engine is not None else engine.stats()
    return {
        "backend": ex.backend.name,
        "device": ex.backend.device,
        "kernels": kernels_used(ex),
        "model": cfg.model,
        "model_detail": repr(ex.model),
        "cuda_graphs": ex.use_cuda_graph,
        "requests": stats.requests,
        "requests_failed": len(stats.failed),
        "requests_planned": total,
        "prompt_tokens": es.prompt_tokens,
        "computed_tokens": es.computed_tokens,
        "prefix_cache": cfg.enable_prefix_caching,
        "prefix_hit_rate": round(es.prefix_hit_rate, 4),
        "steps": es.steps,
        "time_s": round(stats.wall_s, 3),
        "tokens_per_s": round(es.prompt_tokens / stats.wall_s, 1) if stats.wall_s else 0.0,
        "ttft_ms_mean": round(sum(ms) / len(ms), 2) if ms else None,
        "ttft_ms_p50": round(percentile(ms, 50), 2) if ms else None,
        "ttft_ms_p90": round(percentile(ms, 90), 2) if ms else None,
        "padding_waste_pct": round(100 * es.padding_waste, 2),
        "first_token_logprob_mean": (
            round(float(np.mean(stats.first_token_logprobs)), 4)
            if stats.first_token_logprobs
            else None
        ),
        "transfer": cfg.transfer,
        "transfer_mode": cfg.transfer_mode,
        "decode_instances": engine.links.stats() if engine.links is not None else {},
        "transfer_tail_ms_p50": _ms(stats.tail_s, 50),
        "transfer_tail_ms_p90": _ms(stats.tail_s, 90),
        "transfer_verified": bool(cfg.transfer == "nixl" and cfg.verify_transfer),
        "transfer_bytes": es.kv_bytes_sent,
        "transfer_gbps": round(es.transfer_gbps, 4),
        "transfer_ms_p50": _ms(lat, 50),
        "transfer_ms_p90": _ms(lat, 90),
        "decode_ttft_ms_mean": _ms(dttft),
        "decode_ttft_ms_p50": _ms(dttft, 50),
        "decode_ttft_ms_p90": _ms(dttft, 90),
        "decode_tokens": cfg.decode_tokens,
        "decoded_tokens": es.decoded_tokens,
        "decode_tokens_per_s": round(es.decode_tokens_per_s, 1),
        "tpot_ms_mean": _ms(stats.tpot_s),
        "tpot_ms_p50": _ms(stats.tpot_s, 50),
        "tpot_ms_p90": _ms(stats.tpot_s, 90),
        "decode_verified": None
        if verified is None
        else f"{verified[0] - len(verified[1])}/{verified[0]}",
        "decode_mismatches": None if verified is None else [str(m) for m in verified[1]],
        "graph_replays": {str(k): v for k, v in sorted(ex.replays.items())},
        "eager_runs": {str(k): v for k, v in sorted(ex.eager_runs.items())},
        "graph_memory_bytes": {str(k): v for k, v in sorted(ex.graph_memory.items())},
        "peak_gpu_memory": peak,
        "request_details": request_details(sessions, stats),
    }


def print_table(summary: dict[str, Any]) -> None:
    rows = [
        ("model", summary["model_detail"]),
        ("backend / device", f"{summary['backend']} / {summary['device']}"),
        ("kernels", summary["kernels"]),
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
        *(
            [("per decode instance", _instances_row(summary))]
            if len(summary["decode_instances"]) > 1
            else []
        ),
        (
            "decode-side TTFT mean / P50 / P90",
            f"{summary['decode_ttft_ms_mean']} / {summary['decode_ttft_ms_p50']} / "
            f"{summary['decode_ttft_ms_p90']} ms"
            if summary["transfer"] == "nixl"
            else "n/a (--transfer none)",
        ),
        ("decode side", _decode_row(summary)),
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
        f"NIXL ({summary['transfer_mode']}-wise), {summary['transfer_bytes'] / 2**20:.1f} MiB "
        f"at {summary['transfer_gbps']} GB/s, latency P50 / P90 {summary['transfer_ms_p50']} / "
        f"{summary['transfer_ms_p90']} ms, tail (decode-side TTFT - TTFT) P50 / P90 "
        f"{summary['transfer_tail_ms_p50']} / {summary['transfer_tail_ms_p90']} ms"
        + (", checksums verified" if summary["transfer_verified"] else "")
    )


def _instances_row(summary: dict[str, Any]) -> str:
    return "; ".join(
        f"{addr}: {v['requests']} requests, {v['bytes'] / 2**20:.1f} MiB"
        + (f", {v['failed']} failed" if v["failed"] else "")
        + (" (down)" if v["down"] else "")
        for addr, v in summary["decode_instances"].items()
    )


def _decode_row(summary: dict[str, Any]) -> str:
    if not summary["decode_tokens"]:
        return "off (--decode-tokens 0: the decode side keeps the KV only)"
    return (
        f"{summary['decoded_tokens']} tokens ({summary['decode_tokens']} per request) at "
        f"{summary['decode_tokens_per_s']} tokens/s, TPOT mean / P50 / P90 "
        f"{summary['tpot_ms_mean']} / {summary['tpot_ms_p50']} / {summary['tpot_ms_p90']} ms"
    )


def print_first_tokens(sessions: list[list[Turn]], stats: ChatStats, tokenizer: Any) -> None:
    """A few requests' last user message and the reply: the first token, and the decode
    side's continuation when there is one."""
    if tokenizer is None:
        return
    shown = [t for turns in sessions for t in turns if t.request.request_id in stats.first_tokens]
    step = max(1, len(shown) // SHOWN_REQUESTS)
    print("replies (first token + decode side):" if stats.decoded else "first tokens:")
    for t in shown[::step][:SHOWN_REQUESTS]:
        rid = t.request.request_id
        msg = t.text if len(t.text) <= 60 else t.text[:57] + "..."
        ids = [stats.first_tokens[rid], *stats.decoded.get(rid, ())]
        reply = tokenizer.decode(ids, skip_special_tokens=bool(stats.decoded))
        print(f"  {rid:>8}  {msg!r} -> {reply!r}")


def print_verification(verified: tuple[int, list]) -> None:
    checked, mismatches = verified
    if not mismatches:
        print(f"decode verified: {checked}/{checked} identical")
        return
    print(f"decode verified: {checked - len(mismatches)}/{checked} identical; mismatches:")
    for m in mismatches:
        print(f"  {m}")
