"""One GPU cost tool for both hand-written kernels (no GPU needed): each compiles the
configurations the executor launches for sm_90 with Triton's real compiler, reads the hot
loops from the disassembly and prints the H100 estimate, old kernel beside new.

    TRITON_INTERPRET=0 python benchmarks/gpu_cost.py                 # both
    TRITON_INTERPRET=0 python benchmarks/gpu_cost.py sampler --cache # one, with its flags
    TRITON_INTERPRET=0 python benchmarks/gpu_cost.py attention

The models and their assumptions are in ``sampler_cost.py`` and ``attention_cost.py``;
``docs/gpu-notes.md`` says how a GPU run confirms them.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attention_cost  # noqa: E402
import sampler_cost  # noqa: E402

TOOLS = {"sampler": sampler_cost.main, "attention": attention_cost.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:])
    if argv:
        print(f"gpu_cost.py: first argument must be one of {sorted(TOOLS)}, got {argv[0]!r}")
        return 2
    code = 0
    for name, tool in TOOLS.items():
        print(f"== {name} ==", flush=True)
        code |= tool([])
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
