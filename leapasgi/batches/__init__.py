"""OpenAI's Files and Batch APIs, run by the gateway itself: records and their shapes
(``objects``), input lines (``lines``), the store (``store``, ``sqlite``, ``redis``), how
lines are answered (``executor``; ``native``: handed over to a provider's batch API) and each
batch's life, one runner at a time (``runner``)."""

from __future__ import annotations

from .executor import BatchExecutor, BatchRun, DispatchExecutor, LineHandler
from .native import NativeExecutor
from .objects import BatchRecord, BatchStatus, FileRecord, LineResult, TenantRecord
from .runner import BatchRunner, TenantOf
from .sqlite import SqliteBatchStore
from .store import BatchStore, NewFile

__all__ = [
    "BatchExecutor",
    "BatchRecord",
    "BatchRun",
    "BatchRunner",
    "BatchStatus",
    "BatchStore",
    "DispatchExecutor",
    "FileRecord",
    "LineHandler",
    "LineResult",
    "NativeExecutor",
    "NewFile",
    "SqliteBatchStore",
    "TenantOf",
    "TenantRecord",
]
