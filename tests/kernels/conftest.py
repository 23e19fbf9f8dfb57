from __future__ import annotations

import graphbatch.kernels  # noqa: F401  (picks interpreter vs GPU before tests build tensors)
import pytest
import torch


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
