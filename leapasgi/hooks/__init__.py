"""Request hooks: code that sees every request in one normalized form, whatever its protocol,
before it is routed, with its answer, its streamed chunks, and its error.

    Hook            the base to override (sync or async methods)
    HookContext     the request as hooks see it: model, protocol, tenant, text (read, rewrite)
    HookChain       a gateway's hooks in order, each call isolated
    PiiRedactor     personal data out of prompts
    ModelPolicy     allow and deny lists of models
"""

from __future__ import annotations

from .base import Answer, Chunk, Hook, HookContext
from .chain import HookChain, load_hook
from .model_policy import ModelPolicy
from .pii import PII_KINDS, PiiRedactor

__all__ = [
    "PII_KINDS",
    "Answer",
    "Chunk",
    "Hook",
    "HookChain",
    "HookContext",
    "ModelPolicy",
    "PiiRedactor",
    "load_hook",
]
