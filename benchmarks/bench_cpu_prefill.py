"""Prompt tokens/s of SmolLM2-135M prefill (float32, CPU): graphbatch on its torch and
paddle backends vs HF transformers' forward on the same weights and prompts (one
left-padded batch, and one prompt at a time; the faster is the baseline), plus
graphbatch's per-step split: host (schedule + check + staging) vs model (forward +
sampler). Prompts: rounds 0 and 1 of every chat session, rendered by the model's chat
template; prefix cache off, so every prompt token is computed. Best of --repeat runs per
configuration after a warm-up, configurations interleaved (A B C D A B C D ...) so
machine noise hits all of them alike. Ratios are measured in this run.

    python benchmarks/bench_cpu_prefill.py [--repeat 3] [--threads N] [--budget 2048]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

import paddle
import torch
from graphbatch.executor import GraphExecutor
from graphbatch.models import load_model, smollm2_path
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams, SchedulerConfig
from graphbatch.scheduler.chat_text import SESSIONS, conversation
from paddle.base import core as paddle_core

PAUSE_S = 0.3  # between configurations: the other OpenMP runtime's idle threads stop spinning


def paddle_threads() -> int:
    """Threads of paddle's OpenMP runtime (its own libiomp5): what its CPU kernels use."""
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so"))
        return int(lib.omp_get_max_threads())
    except OSError:
        return -1


def graphbatch_config(prompts: list[list[int]], budget: int, block: int, vocab: int):
    return SchedulerConfig(
        max_num_seqs=len(prompts),
        max_num_batched_tokens=budget,
        block_size=block,
        num_kv_blocks=sum(-(-len(p) // block) for p in prompts) + 2,
        max_model_len=max(2048, max(map(len, prompts))),
        vocab_size=vocab,
        enable_prefix_caching=False,
    )


def graphbatch_run(ex: GraphExecutor, prompts: list[list[int]]) -> dict:
    """All prompts to their first token; times only the steps, split by phase."""
    sched = PrefillScheduler(ex.config)
    for i, p in enumerate(prompts):
        sched.add_request(Request(f"p{i}", p, SamplingParams(temperature=0.0)))
    t = dict.fromkeys(("schedule", "check", "stage", "model", "total"), 0.0)
    steps, first = 0, {}
    while True:
        t0 = time.perf_counter()
        d = sched.schedule()
        t1 = time.perf_counter()
        if d is None:
            break
        ex.check(d)
        t2 = time.perf_counter()
        out = ex._run(d)  # buffers.load (prepare_s), then forward + sampler (device_s)
        t3 = time.perf_counter()
        sched.update(d, out.sampled)  # not a step phase: untimed
        t["schedule"] += t1 - t0
        t["check"] += t2 - t1
        t["stage"] += out.prepare_s
        t["model"] += out.device_s
        t["total"] += t3 - t0
        steps += 1
        first.update(out.token_ids)
    return dict(t, steps=steps, first=[first[f"p{i}"] for i in range(len(prompts))])


def hf_batch(hf, prompts: list[list[int]], pad_id: int) -> dict:
    """One left-padded batch; positions count real tokens only."""
    t0 = time.perf_counter()
    n, width = len(prompts), max(map(len, prompts))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = hf(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
        first = logits[:, -1].argmax(-1).tolist()
    return {"total": time.perf_counter() - t0, "steps": 1, "first": first}


def hf_each(hf, prompts: list[list[int]]) -> dict:
    t0, first = time.perf_counter(), []
    with torch.inference_mode():
        for p in prompts:
            logits = hf(input_ids=torch.tensor([p]), logits_to_keep=1).logits
            first.append(int(logits[0, -1].argmax()))
    return {"total": time.perf_counter() - t0, "steps": len(prompts), "first": first}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per configuration")
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default, for both")
    ap.add_argument("--budget", type=int, default=2048, help="max_num_batched_tokens")
    ap.add_argument("--block-size", type=int, default=16)
    args = ap.parse_args()
    paddle_default = paddle_threads()  # paddle sets 1 at import unless OMP_NUM_THREADS is set
    if args.threads:
        torch.set_num_threads(args.threads)
    paddle_core.set_num_threads(torch.get_num_threads())
    print(
        f"threads: torch {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
        f"paddle {paddle_threads()} (its own default was {paddle_default}); "
        f"{os.cpu_count()} CPUs"
    )

    from transformers import AutoModelForCausalLM
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()

    models = {b: load_model("smollm2", dtype="float32") for b in ("torch", "paddle")}
    tok = models["torch"].tokenizer
    prompts = [
        tok.apply_chat_template(conversation(system, users, replies, r))
        for r in (0, 1)
        for system, users, replies in SESSIONS
    ]
    vocab = models["torch"].config.vocab_size
    cfg = graphbatch_config(prompts, args.budget, args.block_size, vocab)
    ex = {b: GraphExecutor(m, cfg, backend=b) for b, m in models.items()}
    folder, name = os.path.split(smollm2_path())
    hf = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    pad_id = tok.eos_token_id or 0  # any id: padding is masked out
    configs = {
        "graphbatch torch": lambda: graphbatch_run(ex["torch"], prompts),
        "graphbatch paddle": lambda: graphbatch_run(ex["paddle"], prompts),
        "HF padded batch": lambda: hf_batch(hf, prompts, pad_id),
        "HF one at a time": lambda: hf_each(hf, prompts),
    }
    ntok = sum(map(len, prompts))
    print(
        f"SmolLM2-135M float32 on CPU: {len(prompts)} prompts, {ntok} tokens "
        f"({min(map(len, prompts))}..{max(map(len, prompts))} each; padded batch "
        f"{len(prompts)} x {max(map(len, prompts))}), budget {args.budget}, "
        f"block {args.block_size}, prefix cache off, best of {args.repeat}"
    )
    for fn in configs.values():  # warm-up
        fn()
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for key, fn in configs.items():
            time.sleep(PAUSE_S)
            w0, c0 = time.perf_counter(), time.process_time()
            r = fn()
            r["cores"] = (time.process_time() - c0) / (time.perf_counter() - w0)
            if key not in best or r["total"] < best[key]["total"]:
                best[key] = r
    base_key = min(("HF padded batch", "HF one at a time"), key=lambda k: best[k]["total"])
    base = ntok / best[base_key]["total"]
    print(
        f"{'configuration':<18} {'best s':>7} {'tok/s':>7} {'vs HF':>6} {'steps':>5} "
        f"{'cores':>5} {'1st tok = HF':>12} | per step ms: {'sched':>6} {'check':>6} "
        f"{'stage':>6} {'other':>6} {'model':>7} {'host %':>6}"
    )
    ref = best["HF one at a time"]["first"]
    for key, r in best.items():
        rate = ntok / r["total"]
        same = sum(a == b for a, b in zip(r["first"], ref, strict=True))
        line = (
            f"{key:<18} {r['total']:>7.3f} {rate:>7.0f} {rate / base:>5.2f}x {r['steps']:>5} "
            f"{r['cores']:>5.2f} {f'{same}/{len(ref)}':>12}"
        )
        if "model" in r:  # other: the rest of _run (its output dicts), host side
            other = r["total"] - r["schedule"] - r["check"] - r["stage"] - r["model"]
            ms = [1e3 * x / r["steps"] for x in (r["schedule"], r["check"], r["stage"], other)]
            line += " | " + " " * 13 + " ".join(f"{x:>6.2f}" for x in ms)
            host = 100 * (1 - r["model"] / r["total"])
            line += f" {1e3 * r['model'] / r['steps']:>7.1f} {host:>5.1f}%"
        print(line, flush=True)
    print("cores: process CPU time / wall time of a run (all threads; the machine's load caps it)")
    print(f"baseline (best transformers): {base_key}, {base:.0f} tok/s")
    for b in ("torch", "paddle"):
        k = f"graphbatch {b}"
        print(f"{k} / best transformers: {ntok / best[k]['total'] / base:.2f}x")


if __name__ == "__main__":
    main()
