"""CUDA-graph executor consuming fixed-capacity batch descriptors."""

from .backends import Backend, BackendUnavailable, get_backend
from .errors import BoundsError
from .graph_executor import GraphExecutor
from .model_api import ExecutorModel, KVCacheModel
from .static_buffers import CHECKS, ModelInputs, StaticBuffers
from .step import StepOutput

__all__ = [
    "CHECKS",
    "Backend",
    "BackendUnavailable",
    "BoundsError",
    "ExecutorModel",
    "GraphExecutor",
    "KVCacheModel",
    "ModelInputs",
    "StaticBuffers",
    "StepOutput",
    "get_backend",
]
