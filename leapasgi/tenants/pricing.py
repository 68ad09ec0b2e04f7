"""What a request cost: model prices (the shipped ``prices.toml`` under the config's
``[prices]``), the batch rates of the services the gateway hands whole batches to, and the
arithmetic.

Cost is USD as a float rounded to nine decimals (a nano-dollar): below any provider's
per-token price (the cheapest, $0.0028 per million, is 2.8e-9 a token), and a fixed grain
lets the usage stores keep sums as exact integers of nano-dollars.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import PriceConfig

__all__ = ["COST_DIGITS", "Price", "PriceTable", "batch_price", "cost"]

# Decimal places of a cost in USD.
COST_DIGITS = 9
TOKENS_PER_UNIT = 1_000_000
# Lookups a table remembers; past this (model names are the clients'), it stops adding.
MAX_REMEMBERED = 4096

# A dated snapshot or alias of a model: "-2024-08-06" (OpenAI), "-20250929" (Anthropic),
# "-latest".
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
_PRICES_FILE = "prices.toml"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens: prompt tokens (``input``), completion tokens (``output``),
    and prompt tokens read from the provider's cache (``cached_input``)."""

    input: float
    output: float
    cached_input: float


def cost(price: Price, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
    """USD for one request. ``cached_tokens`` are part of ``prompt_tokens`` (as OpenAI's
    ``prompt_tokens_details.cached_tokens``) and billed at ``cached_input``."""
    cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
    usd = (
        (prompt_tokens - cached) * price.input
        + cached * price.cached_input
        + completion_tokens * price.output
    ) / TOKENS_PER_UNIT
    return round(usd, COST_DIGITS)


def batch_price(price: Price, rate: float) -> Price:
    """``price`` at a batch ``rate`` (0.5: half of every rate, cached input included)."""
    return Price(price.input * rate, price.output * rate, price.cached_input * rate)


class PriceTable:
    """Prices by model id. ``price_of`` also finds a model asked for as "provider/model" and
    a dated snapshot under its base name; lookups are remembered. ``batch`` holds the batch
    rate of each service (by preset name) that takes whole batches through its own API."""

    __slots__ = ("_batch", "_prices", "_remembered", "date", "source")

    def __init__(
        self,
        prices: Mapping[str, Price],
        *,
        date: str = "",
        source: str = "",
        batch: Mapping[str, float] | None = None,
    ) -> None:
        self._prices: Mapping[str, Price] = MappingProxyType(dict(prices))
        rates = {service.lower(): rate for service, rate in (batch or {}).items()}
        self._batch: Mapping[str, float] = MappingProxyType(rates)
        self._remembered: dict[tuple[str, str | None], Price | None] = {}
        self.date = date
        self.source = source

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models, date={self.date!r})"

    def __len__(self) -> int:
        return len(self._prices)

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    @classmethod
    def shipped(cls) -> PriceTable:
        """The table that ships with leapasgi (``prices.toml``), read once per process."""
        prices, batch, date, source = _shipped()
        return cls(prices, date=date, source=source, batch=batch)

    def with_overrides(self, prices: Mapping[str, PriceConfig]) -> PriceTable:
        """A new table: this one with ``prices`` (the config's ``[prices]``) added or
        replacing entries."""
        merged = dict(self._prices)
        for model, config in prices.items():
            cached = config.input if config.cached_input is None else config.cached_input
            merged[model] = Price(config.input, config.output, cached)
        return PriceTable(merged, date=self.date, source=self.source, batch=self._batch)

    def batch_rate(self, service: str) -> float | None:
        """The fraction of the standard rates ``service`` (a preset name) charges for a batch
        handed over to its own batch API; None when the table has none for it."""
        return self._batch.get(service.lower())

    def batch_price_of(
        self, model: str, *, service: str, provider: str | None = None
    ) -> Price | None:
        """The price of ``model`` in a batch handed over to ``service`` (the provider's
        preset; ``provider``, its name, finds per-provider overrides as ``price_of`` does):
        its standard price at the service's batch rate. None when either is unknown: a batch
        that cannot be priced is not handed over."""
        rate = self.batch_rate(service)
        if rate is None:
            return None
        price = self.price_of(model, provider)
        return None if price is None else batch_price(price, rate)

    def price_of(self, model: str, provider: str | None = None) -> Price | None:
        """The price of ``model`` (as served by ``provider``), or None when unknown.

        In order: "<provider>/<model>" (an override for one provider), the model id, the id
        without a "provider/" prefix, and the base name of a dated snapshot
        ("gpt-4o-2024-08-06" -> "gpt-4o")."""
        key = (model, provider)
        remembered = self._remembered
        if key in remembered:
            return remembered[key]
        price = self._find(model, provider)
        if len(remembered) < MAX_REMEMBERED:
            remembered[key] = price
        return price

    def _find(self, model: str, provider: str | None) -> Price | None:
        prices = self._prices
        if provider is not None and (price := prices.get(f"{provider}/{model}")) is not None:
            return price
        _, slash, bare = model.partition("/")
        names = (model, bare) if slash and bare else (model,)
        for name in names:
            if (price := prices.get(name)) is not None:
                return price
        for name in names:
            base = _SNAPSHOT.sub("", name)
            if base != name and (price := prices.get(base)) is not None:
                return price
        return None


@functools.cache
def _shipped() -> tuple[Mapping[str, Price], Mapping[str, float], str, str]:
    # Cached: the file ships with the package and the result is immutable.
    text = resources.files("leapasgi.tenants").joinpath(_PRICES_FILE).read_text(encoding="utf-8")
    return _parse(tomllib.loads(text))


def _parse(data: Mapping[str, Any]) -> tuple[Mapping[str, Price], Mapping[str, float], str, str]:
    """The prices, batch rates, date and source of a price file's TOML; ValueError when
    malformed."""
    date, source, models = data.get("date"), data.get("source"), data.get("models")
    if not isinstance(date, str) or not isinstance(source, str):
        raise ValueError("a price file names its date and source (strings)")
    if not isinstance(models, dict):
        raise ValueError("a price file has a [models] table")
    prices = {}
    for model, entry in models.items():
        if not isinstance(entry, dict) or not {"input", "output"} <= entry.keys():
            raise ValueError(f"models.{model!r}: needs input and output")
        if entry.keys() - {"input", "output", "cached_input"}:
            raise ValueError(f"models.{model!r}: only input, output and cached_input")
        input_, output = _usd(model, entry["input"]), _usd(model, entry["output"])
        cached = _usd(model, entry.get("cached_input", input_))
        prices[model] = Price(input_, output, cached)
    return MappingProxyType(prices), _batch_rates(data.get("batch", {})), date, source


def _batch_rates(table: object) -> Mapping[str, float]:
    if not isinstance(table, dict):
        raise ValueError("[batch] is a table of service = rate")
    rates = {}
    for service, rate in table.items():
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
            raise ValueError(f"batch.{service!r}: a rate is a fraction of the standard price")
        rates[service.lower()] = float(rate)
    return MappingProxyType(rates)


def _usd(model: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"models.{model!r}: prices are numbers, 0 or more")
    return float(value)
