"""ModelPolicy: which models (and aliases) a gateway's clients may ask for."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..exceptions import PermissionDeniedError
from .base import Hook, HookContext

__all__ = ["ModelPolicy"]


def _matcher(names: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for names with ``*`` wildcards; None for no names."""
    parts = [".*".join(re.escape(part) for part in name.split("*")) for name in names]
    return re.compile("|".join(f"(?:{part})" for part in parts)) if parts else None


class ModelPolicy(Hook):
    """Refuses (403 ``model_not_allowed``) a model not in ``allow`` (when given) or in
    ``deny``; names may use ``*`` wildcards ("gpt-4o*", "*/preview-*"); deny wins."""

    name = "model_policy"

    def __init__(
        self, *, allow: Iterable[str] | None = None, deny: Iterable[str] | None = None
    ) -> None:
        self._allow = None if allow is None else _matcher(allow) or re.compile("(?!)")
        self._deny = _matcher(deny or ())

    def allows(self, model: str) -> bool:
        """Whether ``model`` may be asked for."""
        if self._deny is not None and self._deny.fullmatch(model):
            return False
        return self._allow is None or self._allow.fullmatch(model) is not None

    def before(self, ctx: HookContext) -> None:
        if not self.allows(ctx.model):
            raise PermissionDeniedError(
                f"The model {ctx.model!r} is not allowed by this gateway",
                param="model",
                code="model_not_allowed",
            )
