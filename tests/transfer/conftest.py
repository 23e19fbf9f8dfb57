from __future__ import annotations

import os

# Keep UCX on loopback in tests (the two processes share this host).
os.environ.setdefault("UCX_NET_DEVICES", "lo")
