"""Parameter rules: what a provider's model cannot take, and what is done about it.

Two kinds of rule, kept apart on purpose:

- **adapt**: the provider cannot take a parameter, but losing or respelling it does not change
  what the client gets back (another name for the token limit, a sampling hint, a default
  the provider needs): it is renamed, dropped, clamped or set on the way out, and the
  request's trail says so (``u1: renamed max_tokens -> max_completion_tokens, dropped
  temperature``).
- **refuse**: the parameter's meaning would be lost (``n=3`` where one choice is all the
  provider makes, ``logprobs``, a JSON schema it ignores): that provider is skipped for the
  request, and when no provider can serve it the request is refused with a 400 naming the
  parameter, before any upstream call.

Which parameters may be adapted is fixed here (``MEANINGFUL`` never may), so neither a preset
nor a config file can make the gateway silently change an answer. Rules come in sets, each
for every model or the models matching its patterns (``fnmatch`` globs); a provider's sets
(its preset's, then its config's, later ones winning) are merged once per model and kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Self, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from .types import ChatCompletionRequest
from .types.request import FunctionTool, NamedToolChoice

__all__ = [
    "CLAMPABLE",
    "CORE",
    "MEANINGFUL",
    "ModelParams",
    "ParamPolicy",
    "ParamRules",
    "Refusal",
]

# What the gateway itself decides: no rule touches these.
CORE = frozenset({"model", "messages", "stream"})
# Parameters whose loss changes what the client gets back (how many choices, logprobs, the
# answer's format, which tools may be called and how, where it stops, token bans, audio):
# never dropped, clamped or defaulted; a provider that cannot take them is skipped.
MEANINGFUL = frozenset(
    {
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "stop",
        "logit_bias",
        "modalities",
        "audio",
        "web_search_options",
    }
)
# Lowering these bounds an answer's length or randomness, nothing else: they may be clamped.
CLAMPABLE = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
    }
)
# The request fields that hold numbers (``max`` limits may name these, or unmodelled ones).
_NUMERIC = CLAMPABLE | {"n", "top_logprobs", "seed"}
# The kinds of value an ``unsupported`` entry may name, as ``param:kind``.
KINDS: Mapping[str, frozenset[str]] = {
    "response_format": frozenset({"text", "json_object", "json_schema"}),
    "tool_choice": frozenset({"none", "auto", "required", "function", "allowed_tools", "custom"}),
}
# A meaningful parameter's value when it asks for nothing: a provider that does not take
# the parameter gets it dropped instead of being skipped.
_NEUTRAL: Mapping[str, Any] = {
    "n": 1,
    "logprobs": False,
    "top_logprobs": 0,
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "response_format": "text",
    "logit_bias": {},
    "stop": [],
}
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_FIELDS = ChatCompletionRequest.model_fields
# The two spellings of the token limit; when a client sends both, max_completion_tokens wins.
_TOKEN_LIMITS = frozenset({"max_tokens", "max_completion_tokens"})
# Models compiled per provider; past this (clients may name any ``provider/model``), the
# rules are merged again for each request instead of kept.
_MAX_COMPILED = 4096
_ABSENT: Any = object()


class ParamRules(BaseModel):
    """One set of parameter rules (a ``[providers.params]`` table), for every model of its
    provider or for those matching ``models``. Parameters are named as the client sends them
    (OpenAI's names); ``defaults`` name what the provider receives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # fnmatch globs over the model name sent upstream ("o3*"); empty: every model.
    models: tuple[str, ...] = ()
    # Sent under another name: {max_tokens = "max_completion_tokens"}.
    rename: dict[str, str] = Field(default_factory=dict)
    # Left out: parameters the provider rejects and whose loss the answer does not show.
    drop: tuple[str, ...] = ()
    # Set when the outgoing body lacks them: {keep_alive = "5m"}.
    defaults: dict[str, JsonValue] = Field(default_factory=dict)
    # Values above these are refused (the provider is skipped): {n = 1}.
    max: dict[str, float] = Field(default_factory=dict)
    # Values above these are lowered to them: {temperature = 1}.
    clamp: dict[str, float] = Field(default_factory=dict)
    # Parameters (or "param:kind", e.g. "response_format:json_schema") the provider cannot
    # serve: a request that asks for them is not sent there.
    unsupported: tuple[str, ...] = ()
    # Passed as sent, whatever earlier rule sets (the preset's) said.
    allow: tuple[str, ...] = ()
    # The provider takes tool_choice only as a string ("none", "auto", "required"): a call
    # forced to the one tool given is sent as "required"; any other object is refused.
    string_tool_choice: bool | None = None

    @model_validator(mode="after")
    def _sound(self) -> Self:
        for pattern in self.models:
            if not pattern:
                raise ValueError("models: a pattern cannot be empty")
        named = [*self.rename, *self.rename.values(), *self.drop, *self.defaults]
        named += [*self.max, *self.clamp]
        named += [entry.partition(":")[0] for entry in (*self.unsupported, *self.allow)]
        for name in named:
            _check_name(name)
        for name in self.drop:
            if name in MEANINGFUL:
                raise ValueError(
                    f"drop: dropping {name!r} would change what the client gets back; "
                    "list it under unsupported (or max) so requests that need it go elsewhere"
                )
        for name in self.defaults:
            if name in MEANINGFUL:
                raise ValueError(f"defaults: a default {name!r} would change the answer")
        for name in self.clamp:
            if name not in CLAMPABLE:
                raise ValueError(
                    f"clamp: {name!r} cannot be lowered without changing the answer (only "
                    f"{', '.join(sorted(CLAMPABLE))}); use max to refuse larger values"
                )
        for name in self.max:
            if name in _FIELDS and name not in _NUMERIC:
                raise ValueError(f"max: {name!r} does not hold a number")
        for entry in (*self.unsupported, *self.allow):
            _check_kind(entry)
        for source, target in self.rename.items():
            _check_rename(source, target)
        whole = [e for e in self.unsupported if ":" not in e]
        _no_overlap(
            {
                "rename": self.rename,
                "drop": self.drop,
                "unsupported": whole,
                "allow": [e for e in self.allow if ":" not in e],
            }
        )
        _check_defaults(self.defaults)
        return self

    def applies_to(self, model: str) -> bool:
        """True when this set's rules hold for ``model``."""
        return not self.models or any(fnmatchcase(model, p) for p in self.models)


def _check_name(name: str) -> None:
    if not re.match(_NAME, name):
        raise ValueError(f"{name!r} is not a parameter name")
    if name in CORE:
        raise ValueError(f"{name!r} is the gateway's own; no rule may change it")


def _check_kind(entry: str) -> None:
    name, colon, kind = entry.partition(":")
    if not colon:
        return
    kinds = KINDS.get(name)
    if kinds is None:
        raise ValueError(f"{entry!r}: only {', '.join(sorted(KINDS))} take a ':kind'")
    if kind not in kinds:
        raise ValueError(f"{entry!r}: the kinds of {name} are {', '.join(sorted(kinds))}")


def _check_rename(source: str, target: str) -> None:
    if source == target:
        raise ValueError(f"rename: {source!r} renamed to itself")
    if target in CORE:
        raise ValueError(f"rename: {target!r} is the gateway's own")
    modelled = source in _FIELDS and target in _FIELDS
    if modelled and _FIELDS[source].annotation != _FIELDS[target].annotation:
        raise ValueError(f"rename: {source!r} and {target!r} hold different kinds of value")


def _no_overlap(groups: Mapping[str, Iterable[str]]) -> None:
    seen: dict[str, str] = {}
    for group, names in groups.items():
        for name in names:
            if name in seen and seen[name] != group:
                raise ValueError(f"{name!r} is under both {seen[name]} and {group}")
            seen[name] = group


def _check_defaults(defaults: Mapping[str, JsonValue]) -> None:
    modelled = {name: value for name, value in defaults.items() if name in _FIELDS}
    if not modelled:
        return
    probe = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    try:
        ChatCompletionRequest.model_validate({**probe, **modelled})
    except ValidationError as exc:
        bad = ", ".join(
            sorted({str(e["loc"][0]) for e in exc.errors(include_input=False) if e["loc"]})
        )
        raise ValueError(f"defaults: not a valid value for {bad or 'a parameter'}") from None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a provider cannot serve a request: the parameter, and what the provider does
    (``takes n up to 1``; read after the provider's name)."""

    param: str
    reason: str
    code: str


class ModelParams:
    """The merged rules for one model of one provider: ``refusal`` says whether a request can
    go there, ``adapt`` makes the body it is sent."""

    __slots__ = (
        "_clamp",
        "_defaults",
        "_drop",
        "_max",
        "_rename",
        "_string_choice",
        "_touched",
        "_unsupported",
    )

    def __init__(
        self,
        *,
        rename: Mapping[str, str],
        drop: Iterable[str],
        defaults: Mapping[str, Any],
        max: Mapping[str, float],
        clamp: Mapping[str, float],
        unsupported: Mapping[str, frozenset[str] | None],
        string_tool_choice: bool = False,
    ) -> None:
        self._rename = tuple(rename.items())
        self._drop = frozenset(drop)
        self._defaults = tuple(defaults.items())
        self._max = tuple(max.items())
        self._clamp = tuple(clamp.items())
        self._unsupported = tuple(unsupported.items())
        # The parameters whose presence means there may be something to adapt.
        self._string_choice = string_tool_choice
        self._touched = frozenset(
            {*rename, *self._drop, *clamp, *(n for n, kinds in unsupported.items() if not kinds)}
            | ({"tool_choice"} if string_tool_choice else set())
        )

    def __repr__(self) -> str:
        return f"ModelParams({', '.join(self.describe())})"

    def omits(self, name: str) -> bool:
        """True when ``name`` is never sent (``stream_options``, which the provider adds)."""
        return name in self._drop

    def describe(self) -> list[str]:
        """The rules in words, for listings and documentation."""
        said = [f"rename {a} -> {b}" for a, b in self._rename]
        said += [f"drop {name}" for name in sorted(self._drop)]
        said += [f"{name} at most {limit:g}" for name, limit in self._max]
        said += [f"clamp {name} to {limit:g}" for name, limit in self._clamp]
        said += [f"default {name}" for name, _ in self._defaults]
        for name, kinds in self._unsupported:
            if kinds:
                said += [f"refuse {name}:{kind}" for kind in sorted(kinds)]
            else:
                said.append(f"refuse {name}")
        if self._string_choice:
            said.append("tool_choice as a string")
        return said

    def refusal(self, request: ChatCompletionRequest) -> Refusal | None:
        """Why this model cannot serve ``request`` as asked, or None when it can."""
        for name, kinds in self._unsupported:
            value = _get(request, name)
            if value is _ABSENT or value is None:
                continue
            if not kinds:
                if not _neutral(name, value):
                    return Refusal(name, f"does not take {name}", "unsupported_parameter")
            elif (kind := _kind(name, value)) in kinds:
                return Refusal(name, f"does not take a {name} of type {kind}", "unsupported_value")
        for name, limit in self._max:
            value = _get(request, name)
            if _number(value) and value > limit:
                return Refusal(name, f"takes {name} up to {limit:g}", "unsupported_value")
        if self._string_choice:
            choice = request.tool_choice
            if not (choice is None or isinstance(choice, str) or _sole_tool(request)):
                reason = "takes tool_choice only as a string (none, auto, required)"
                return Refusal("tool_choice", reason, "unsupported_value")
        return None

    def adapt(
        self, request: ChatCompletionRequest, *, model: str | None = None
    ) -> tuple[ChatCompletionRequest, str]:
        """``request`` as this model takes it (sent as ``model`` when given), and what was
        changed in words: "" when nothing was, and then the same request object. Refusals are
        ``refusal``'s: call it first."""
        fields = request.model_fields_set
        extra = request.model_extra
        if not self._defaults and not any(
            name in fields or (extra is not None and name in extra) for name in self._touched
        ):
            return request, ""
        values: dict[str, Any] = {name: getattr(request, name) for name in fields}
        if extra:
            values.update(extra)
        renamed: list[str] = []
        dropped: list[str] = []
        clamped: list[str] = []
        for name, kinds in self._unsupported:
            if not kinds and name in values:  # neutral, or refusal would have said no
                del values[name]
                dropped.append(name)
        for name, limit in self._clamp:
            value = values.get(name)
            if _number(value) and value > limit:
                # A token limit stays an integer (8192, never 8192.0).
                values[name] = int(limit) if isinstance(value, int) else limit
                clamped.append(f"clamped {name} {value:g} -> {limit:g}")
        for source, target in self._rename:
            if source not in values:
                continue
            value = values.pop(source)
            if target not in values:
                values[target] = value
                renamed.append(f"renamed {source} -> {target}")
            elif {source, target} == _TOKEN_LIMITS and source == "max_completion_tokens":
                values[target] = value
                renamed.append(f"renamed {source} -> {target} (over {target})")
            else:
                dropped.append(f"{source} ({target} given)")
        for name in sorted(self._drop):
            if name in values:
                if name != "stream_options":  # the provider leaves it out (it adds it too)
                    del values[name]
                dropped.append(name)
        added = [name for name, _ in self._defaults if name not in values]
        for name, value in self._defaults:
            values.setdefault(name, value)
        if self._string_choice and isinstance(values.get("tool_choice"), NamedToolChoice):
            values["tool_choice"] = "required"  # the only tool given: refusal checked that
            renamed.append("sent tool_choice as required (the only tool)")
        if not (renamed or dropped or clamped or added):
            return request, ""
        if model is not None:
            values["model"] = model
        changes = renamed
        if dropped:
            changes.append("dropped " + ", ".join(dropped))
        changes += clamped
        if added:
            changes.append("set " + ", ".join(added))
        return ChatCompletionRequest.model_construct(**values), ", ".join(changes)

    def adapt_responses(self, body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
        """A Responses body passed through natively, with the sampling parameters this model
        does not take dropped (``temperature`` and ``top_p`` are spelled alike in both APIs;
        a reasoning model refuses them in either), and what was dropped in words."""
        dropped = [name for name in _RESPONSES_SAMPLING if name in body and name in self._drop]
        clamped = []
        for name, limit in self._clamp:
            value = body.get(name)
            if name in _RESPONSES_SAMPLING and _number(value) and value > limit:
                clamped.append((name, value, limit))
        if not (dropped or clamped):
            return body, ""
        adapted = {name: value for name, value in body.items() if name not in dropped}
        changes = ["dropped " + ", ".join(dropped)] if dropped else []
        for name, value, limit in clamped:
            adapted[name] = limit
            changes.append(f"clamped {name} {value:g} -> {limit:g}")
        return adapted, ", ".join(changes)


# The parameters a Responses body shares, by name and meaning, with chat completions' rules.
_RESPONSES_SAMPLING = ("temperature", "top_p")


class ParamPolicy:
    """A provider's rule sets, merged per model on first use and kept."""

    __slots__ = ("_compiled", "rules")

    def __init__(self, rules: Sequence[ParamRules]) -> None:
        self.rules = tuple(rules)
        self._compiled: dict[str, ModelParams | None] = {}

    def __repr__(self) -> str:
        return f"ParamPolicy({len(self.rules)} rule sets)"

    def for_model(self, model: str) -> ModelParams | None:
        """The rules for ``model``; None when none apply (nothing to check or change)."""
        compiled = self._compiled
        try:
            return compiled[model]
        except KeyError:
            pass
        params = merge(self.rules, model)
        if len(compiled) < _MAX_COMPILED:
            compiled[model] = params
        return params


def merge(rules: Iterable[ParamRules], model: str) -> ModelParams | None:
    """The rule sets that apply to ``model`` as one; a later set wins over an earlier one for
    the parameters it names, and ``allow`` lifts every earlier rule on a parameter."""
    actions: dict[str, str | None] = {}  # a rename's target, or None: dropped
    unsupported: dict[str, set[str] | None] = {}
    limits: dict[str, float] = {}
    clamps: dict[str, float] = {}
    defaults: dict[str, Any] = {}
    string_choice = False
    for ruleset in rules:
        if not ruleset.applies_to(model):
            continue
        if "tool_choice" in ruleset.allow:
            string_choice = False
        if ruleset.string_tool_choice is not None:
            string_choice = ruleset.string_tool_choice
        for entry in ruleset.allow:
            name, _, kind = entry.partition(":")
            if kind:
                kinds = unsupported.get(name, set())
                kinds = set(KINDS[name]) if kinds is None else kinds
                kinds.discard(kind)
                unsupported[name] = kinds
                continue
            tables: tuple[dict[str, Any], ...] = (actions, unsupported, limits, clamps, defaults)
            for table in tables:
                table.pop(name, None)
        for source, target in ruleset.rename.items():
            actions[source] = target
            unsupported.pop(source, None)
        for name in ruleset.drop:
            actions[name] = None
            unsupported.pop(name, None)
        for entry in ruleset.unsupported:
            name, _, kind = entry.partition(":")
            if not kind:
                unsupported[name] = None
                actions.pop(name, None)
            elif (kinds := unsupported.setdefault(name, set())) is not None:
                kinds.add(kind)
        limits.update(ruleset.max)
        clamps.update(ruleset.clamp)
        defaults.update(_typed(ruleset.defaults))
    refused = {n: None if k is None else frozenset(k) for n, k in unsupported.items() if k != set()}
    if not (actions or refused or limits or clamps or defaults or string_choice):
        return None
    return ModelParams(
        rename={s: t for s, t in actions.items() if t is not None},
        drop=[name for name, target in actions.items() if target is None],
        defaults=defaults,
        max=limits,
        clamp=clamps,
        unsupported=refused,
        string_tool_choice=string_choice,
    )


def _typed(defaults: Mapping[str, JsonValue]) -> dict[str, Any]:
    """Defaults as the request holds them: modelled fields as their types (a stream_options
    table as StreamOptions), others as the JSON they are."""
    modelled = {name: value for name, value in defaults.items() if name in _FIELDS}
    if not modelled:
        return dict(defaults)
    probe = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True, **modelled}
    )
    return {name: getattr(probe, name) if name in modelled else v for name, v in defaults.items()}


def _sole_tool(request: ChatCompletionRequest) -> bool:
    """Whether the request forces a call to the one function tool it gives: the same as
    tool_choice "required"."""
    choice, tools = request.tool_choice, request.tools
    if not isinstance(choice, NamedToolChoice) or tools is None or len(tools) != 1:
        return False
    (tool,) = tools
    return isinstance(tool, FunctionTool) and tool.function.name == choice.function.name


def _get(request: ChatCompletionRequest, name: str) -> Any:
    if name in request.model_fields_set:
        return getattr(request, name)
    extra = request.model_extra
    if extra is not None and name in extra:
        return extra[name]
    return _ABSENT


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(name: str, value: Any) -> str | None:
    """The kind of a response_format or tool_choice value ("json_schema", "required"...)."""
    if isinstance(value, str):
        return value
    kind = value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)
    return kind if isinstance(kind, str) else None


def _neutral(name: str, value: Any) -> bool:
    """True when ``value`` asks for nothing the provider would have to do."""
    if name not in _NEUTRAL:
        return False
    if name in KINDS:
        return bool(_kind(name, value) == _NEUTRAL[name])
    neutral = _NEUTRAL[name]
    if isinstance(neutral, bool):
        return value is neutral
    return bool(value == neutral)
