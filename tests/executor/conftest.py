from __future__ import annotations

import pytest

from .helpers import backends


@pytest.fixture(params=backends())
def backend_name(request) -> str:
    return request.param
