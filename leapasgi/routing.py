"""Which providers can serve a request: aliases, ``provider/model`` names, model lists,
features, and the parameter rules of each provider's model (``leapasgi.params``).

Pure lookups over the registry; the manager orders the result and tries it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .exceptions import ModelNotFoundError, UnsupportedFeatureError, UnsupportedParameterError
from .features import required_features
from .native import WireProtocol
from .params import ModelParams, Refusal
from .registry import ProviderEntry, Registry
from .trail import RoutingTrail
from .types import ChatCompletionRequest

__all__ = ["Route", "RouteTable"]

# Unknown model names are cached too (as no routes); this bounds what clients can make us keep.
_MAX_CACHED_MODELS = 4096


@dataclass(frozen=True, slots=True)
class Route:
    """One provider and the model name to send it, with that model's parameter rules (None:
    none), merged when the route was resolved."""

    provider: str
    model: str
    params: ModelParams | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Alias:
    """A public model name for an ordered list of targets, with its own strategy if set."""

    targets: tuple[str, ...]
    strategy: str | None = None
    # Keep a session on one provider (None: the gateway's default).
    sticky: bool | None = None
    # Hedge its requests (None: the gateway's hedged models decide).
    hedge: bool | None = None


class RouteTable:
    """Resolves a request's model to the routes that can serve it."""

    def __init__(
        self,
        registry: Registry,
        aliases: Mapping[str, Alias] | None = None,
        *,
        sticky: bool = False,
        hedged: frozenset[str] = frozenset(),
    ) -> None:
        self._registry = registry
        self.aliases: dict[str, Alias] = dict(aliases or {})
        # Models hedged by default ("*": all), and aliases that say so themselves.
        self._hedged = hedged | {n for n, a in self.aliases.items() if a.hedge}
        self._unhedged = frozenset(n for n, a in self.aliases.items() if a.hedge is False)
        # Sticky routing by default, and whether any model routes sticky at all.
        self.sticky = sticky
        self.sticky_anywhere = sticky or any(a.sticky for a in self.aliases.values())
        # Resolved routes per model name, valid while the registry's version is unchanged.
        self._cache: dict[str, list[Route]] = {}
        self._cache_version = -1
        # The names the gateway lists (aliases, configured or discovered models, and
        # provider/model for those), rebuilt when the registry changes.
        self._listed: frozenset[str] = frozenset()
        self._listed_version = -1

    def is_sticky(self, model: str) -> bool:
        """Whether requests for ``model`` keep their session on one provider."""
        alias = self.aliases.get(model)
        if alias is not None and alias.sticky is not None:
            return alias.sticky
        return self.sticky

    def hedged(self, model: str) -> bool:
        """Whether requests for ``model`` are hedged unless they say otherwise."""
        if model in self._unhedged:
            return False
        return model in self._hedged or "*" in self._hedged

    def routes(
        self, request: ChatCompletionRequest, trail: RoutingTrail | None = None
    ) -> list[Route]:
        """Routes for ``request``, in preference order; 404 for an unknown model, 400 when no
        provider serving it has the features the request needs, or can take its parameters
        as sent. Providers skipped for a parameter are noted in ``trail``."""
        model = request.model
        routes = self._resolved(model)
        if not routes:
            raise ModelNotFoundError(
                f"The model `{model}` does not exist or no configured provider serves it"
            )
        needed = required_features(request)
        if needed:
            routes = [r for r in routes if self._supports(r.provider, needed)]
            if not routes:
                missing = ", ".join(sorted(needed))
                raise UnsupportedFeatureError(
                    f"No provider serving `{model}` supports what this request needs ({missing})",
                    param="model",
                )
        for route in routes:
            if route.params is not None:
                return _servable(routes, request, trail)
        return routes

    def native_routes(self, model: str, protocol: WireProtocol) -> list[Route]:
        """Routes for ``model`` to the providers that speak ``protocol`` natively (embeddings:
        nothing translates them); 404 for an unknown model, 400 when none speaks it."""
        routes = self._resolved(model)
        if not routes:
            raise ModelNotFoundError(
                f"The model `{model}` does not exist or no configured provider serves it"
            )
        registry = self._registry
        capable = [r for r in routes if protocol in registry.get(r.provider).capabilities.protocols]
        if not capable:
            raise UnsupportedFeatureError(
                f"No provider serving `{model}` speaks the {protocol} API", param="model"
            )
        return capable

    def all_native(self, model: str, protocol: WireProtocol) -> list[Route] | None:
        """The routes for ``model`` when every one of them speaks ``protocol`` natively (the
        request then needs no chat form to be routed); else None."""
        routes = self._resolved(model)
        registry = self._registry
        if routes and all(
            protocol in registry.get(r.provider).capabilities.protocols for r in routes
        ):
            return routes
        return None

    def knows(self, model: str) -> bool:
        """True when ``model`` (a name, an alias or ``provider/model``) has a route."""
        return bool(self._resolved(model))

    def targets(self, model: str) -> list[Route]:
        """Every route ``model`` may take, whatever the request needs (for cost estimates)."""
        return self._resolved(model)

    def listed(self, model: str) -> bool:
        """True when ``model`` is a name the gateway lists: an alias, a configured or
        discovered model, or ``provider/model`` for one of that provider's models. Unlike
        ``knows``, never ``provider/<anything>``: only these become metric labels."""
        if self._listed_version != self._registry.version:
            names = set(self.aliases)
            for entry in self._registry:
                names.update(entry.models)
                names.update(f"{entry.name}/{m}" for m in entry.models)
            self._listed = frozenset(names)
            self._listed_version = self._registry.version
        return model in self._listed

    def _resolved(self, model: str) -> list[Route]:
        if self._cache_version != self._registry.version:
            self._cache.clear()
            self._cache_version = self._registry.version
        routes = self._cache.get(model)
        if routes is None:
            alias = self.aliases.get(model)
            targets: Sequence[str] = alias.targets if alias is not None else (model,)
            routes = []
            seen: set[str] = set()
            for target in targets:
                for route in self._resolve(target):
                    if route.provider not in seen:
                        seen.add(route.provider)
                        routes.append(route)
            if len(self._cache) < _MAX_CACHED_MODELS:
                self._cache[model] = routes
        return routes

    def _resolve(self, target: str) -> list[Route]:
        registry = self._registry
        prefix, slash, rest = target.partition("/")
        if slash and rest and prefix in registry:
            return [_route(registry.get(prefix), rest)]
        return [_route(entry, target) for entry in registry if target in entry.models]

    def _supports(self, name: str, needed: frozenset[str]) -> bool:
        capabilities = self._registry.get(name).capabilities
        return all(capabilities.supports(feature) for feature in needed)

    def models(self) -> dict[str, list[str]]:
        """Every routable public model name and the providers behind it (aliases included)."""
        served: dict[str, list[str]] = {}
        for entry in self._registry:
            for model in entry.models:
                served.setdefault(model, []).append(entry.name)
        for name, alias in self.aliases.items():
            providers: list[str] = []
            for target in alias.targets:
                providers += [
                    r.provider for r in self._resolve(target) if r.provider not in providers
                ]
            served[name] = providers
        return served


def _route(entry: ProviderEntry, model: str) -> Route:
    policy = entry.capabilities.params
    return Route(entry.name, model, None if policy is None else policy.for_model(model))


def _servable(
    routes: list[Route], request: ChatCompletionRequest, trail: RoutingTrail | None
) -> list[Route]:
    """The routes whose model can take ``request``'s parameters as sent; the others are
    noted in the trail; a 400 naming the parameter when none can."""
    kept: list[Route] = []
    refused: list[tuple[Route, Refusal]] = []
    for route in routes:
        params = route.params
        refusal = None if params is None else params.refusal(request)
        if refusal is None:
            kept.append(route)
        else:
            refused.append((route, refusal))
    if not kept:
        first = refused[0][1]
        why = "; ".join(f"{route.provider} {refusal.reason}" for route, refusal in refused)
        same = all(refusal.param == first.param for _, refusal in refused)
        what = f"this request's `{first.param}`" if same else "this request"
        raise UnsupportedParameterError(
            f"No provider serving `{request.model}` can take {what} as sent: {why}",
            param=first.param,
            code=first.code,
        )
    if trail is not None:
        for route, refusal in refused:
            trail.notes.append(f"{route.provider}: skipped, it {refusal.reason}")
    return kept
