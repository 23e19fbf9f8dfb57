"""The launchers' GPU branches, run by the interpreter (a cheap proxy for a GPU run).

On a CPU the launchers pick interpreter tiles (many rows per program, large blocks);
``GRAPHBATCH_GPU_TILES=1`` makes them pick what a GPU launch picks (one row per sampler
program, 512-wide vocabulary blocks, the GPU attention tiles), so logic that only the
GPU branch takes (e.g. a query block split across programs) is exercised in CI. The
selected kernel tests run again in a subprocess with that switch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# The sampler at one row per program is slow under the interpreter (~0.1 s a row): its
# small edge-case tests and the full parameter grid at V = 5; slots and attention in full.
SELECT = (
    "gather or scatter or paged or argmax or padded or nan or logprobs_of or out_buffer "
    "or (samples_inside_reference_set and dtype0-5)"
)


def test_kernel_tests_pass_with_gpu_tile_sizes():
    files = ["test_gather_scatter.py", "test_paged_attention.py", "test_top_p_sample.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SELECT]
        + [str(HERE / f) for f in files],
        env={**os.environ, "GRAPHBATCH_GPU_TILES": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail
