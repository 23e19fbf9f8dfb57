"""Re-record tests/profiling/fixtures/h100_nvml.json on a GPU machine:
python tests/profiling/record_nvml.py > tests/profiling/fixtures/h100_nvml.json
"""

from __future__ import annotations

import dataclasses
import json

import torch
from graphbatch.profiling import NvmlReader


def main() -> None:
    torch.zeros(1, device="cuda")  # a CUDA context, as in any serving process
    r = NvmlReader(0)
    nv = r.nvml
    uuids = [
        nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i))
        for i in range(nv.nvmlDeviceGetCount())
    ]
    snaps = [r.read()]
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    snaps.append(r.read())
    del buf
    snaps.append(r.read())
    torch.cuda.empty_cache()
    snaps.append(r.read())
    keys = ("total", "free", "used", "reserved", "process_used")
    print(
        json.dumps(
            {
                "_about": f"recorded on {torch.cuda.get_device_name()} by record_nvml.py",
                "uuids": [u.decode() if isinstance(u, bytes) else u for u in uuids],
                "readings": [{k: dataclasses.asdict(s)[k] for k in keys} for s in snaps],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
