"""The shipped price table, overrides, lookups and the cost of a request."""

from __future__ import annotations

import datetime as dt
import tomllib
from importlib import resources

import pytest

from leapasgi.config import PriceConfig
from leapasgi.tenants.pricing import Price, PriceTable, batch_price, cost
from leapasgi.tenants.pricing import _parse as pricing_file

# The presets' common models the table prices (the brief's list, less what could not be
# confirmed or is retired: see prices.toml).
PRICED = {
    "openai": [
        "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini",
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "text-embedding-3-small", "text-embedding-3-large",
    ],
    "anthropic": [
        "claude-opus-4-1", "claude-sonnet-4-5", "claude-sonnet-4", "claude-haiku-4-5",
        "claude-3-5-haiku",
    ],
    "gemini": ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"],
    "mistral": ["mistral-large-2411", "mistral-medium-2508", "mistral-small-2506"],
    "groq": ["llama-3.3-70b-versatile", "llama-3.1-8b-instant", "openai/gpt-oss-120b"],
    "deepseek": ["deepseek-v4-flash", "deepseek-v4-pro"],
}  # fmt: skip


def test_the_shipped_table_says_when_and_where_its_prices_were_read() -> None:
    table = PriceTable.shipped()
    assert dt.date.fromisoformat(table.date) <= dt.date.today()
    urls = [url.strip() for url in table.source.split(",")]
    assert len(urls) >= 6
    assert all(url.startswith("https://") for url in urls)


@pytest.mark.parametrize("model", [model for models in PRICED.values() for model in models])
def test_every_common_model_is_priced(model: str) -> None:
    price = PriceTable.shipped().price_of(model)
    assert price is not None
    assert price.input >= 0
    assert price.output >= 0
    assert 0 <= price.cached_input <= price.input


def test_the_shipped_table_has_sane_prices() -> None:
    table = PriceTable.shipped()
    for model in table:
        price = table.price_of(model)
        assert price is not None
        assert price.cached_input <= price.input, model
        assert price.input < 100, model
        assert price.output < 200, model
    # Spot checks of the pages' numbers.
    assert table.price_of("gpt-4o") == Price(2.5, 10.0, 1.25)
    assert table.price_of("claude-sonnet-4-5") == Price(3.0, 15.0, 0.3)
    assert table.price_of("gemini-2.5-flash") == Price(0.3, 2.5, 0.03)


def test_the_table_ships_inside_the_package() -> None:
    text = resources.files("leapasgi.tenants").joinpath("prices.toml").read_text("utf-8")
    data = tomllib.loads(text)
    assert set(data) == {"date", "source", "batch", "models"}
    assert len(data["models"]) == len(PriceTable.shipped())


def test_mock_models_are_not_priced() -> None:
    assert PriceTable.shipped().price_of("mock-model") is None
    assert PriceTable.shipped().price_of("mock", "mock") is None


def test_a_cached_input_price_defaults_to_the_input_price() -> None:
    price = PriceTable.shipped().price_of("mistral-large-2411")
    assert price == Price(2.0, 6.0, 2.0)


def test_overrides_win_and_add_models() -> None:
    shipped = PriceTable.shipped()
    table = shipped.with_overrides(
        {
            "gpt-4o": PriceConfig(input=1.0, output=2.0),
            "house-model": PriceConfig(input=0.5, output=0.5, cached_input=0.1),
        }
    )
    assert table.price_of("gpt-4o") == Price(1.0, 2.0, 1.0)
    assert table.price_of("house-model") == Price(0.5, 0.5, 0.1)
    assert table.price_of("gpt-4o-2024-08-06") == Price(1.0, 2.0, 1.0)
    assert table.date == shipped.date
    assert table.source == shipped.source
    # The shipped table is left as it was.
    assert shipped.price_of("gpt-4o") == Price(2.5, 10.0, 1.25)
    assert shipped.price_of("house-model") is None


def test_an_override_may_name_one_provider() -> None:
    table = PriceTable.shipped().with_overrides(
        {"azure/gpt-4o": PriceConfig(input=3.0, output=12.0)}
    )
    assert table.price_of("gpt-4o", "azure") == Price(3.0, 12.0, 3.0)
    assert table.price_of("gpt-4o", "openai") == Price(2.5, 10.0, 1.25)
    assert table.price_of("gpt-4o") == Price(2.5, 10.0, 1.25)


def test_lookup_without_a_provider_prefix() -> None:
    table = PriceTable.shipped()
    assert table.price_of("openai/gpt-4.1-mini") == table.price_of("gpt-4.1-mini")
    assert table.price_of("anthropic/claude-sonnet-4-5-20250929") == Price(3.0, 15.0, 0.3)
    # A slash in the model id itself (Groq's) is found as it is.
    assert table.price_of("openai/gpt-oss-120b") == Price(0.15, 0.6, 0.075)
    assert table.price_of("nobody/") is None


@pytest.mark.parametrize(
    ("snapshot", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ],
)
def test_a_dated_snapshot_falls_back_to_its_base_name(snapshot: str, base: str) -> None:
    table = PriceTable.shipped()
    assert table.price_of(snapshot) == table.price_of(base) is not None


def test_a_snapshot_with_its_own_price_keeps_it() -> None:
    assert PriceTable.shipped().price_of("gpt-4o-2024-05-13") == Price(5.0, 15.0, 5.0)


def test_unknown_models_have_no_price_and_lookups_are_bounded() -> None:
    table = PriceTable({"a": Price(1, 1, 1)}, date="2026-01-01", source="https://example.com")
    assert table.price_of("b") is None
    assert table.price_of("a-20250101") == Price(1, 1, 1)
    assert table.price_of("a-2025") is None  # not a snapshot date
    for i in range(10_000):
        assert table.price_of(f"client-chosen-{i}") is None
    assert table.price_of("a") == Price(1, 1, 1)


def test_cost_bills_cached_tokens_at_the_cached_price() -> None:
    price = Price(input=2.5, output=10.0, cached_input=1.25)
    # 1000 prompt tokens of which 200 cached, 500 completion tokens.
    assert cost(price, 1000, 500, 200) == pytest.approx((800 * 2.5 + 200 * 1.25 + 500 * 10.0) / 1e6)
    assert cost(price, 1000, 500, 200) == 0.00725
    assert cost(price, 1000, 0, 0) == 0.0025
    assert cost(price, 0, 0, 0) == 0.0


def test_cost_clamps_cached_tokens_to_the_prompt() -> None:
    price = Price(input=1.0, output=1.0, cached_input=0.0)
    assert cost(price, 100, 0, 500) == 0.0  # all 100 cached
    assert cost(price, 100, 0, -5) == 0.0001


def test_cost_is_rounded_to_a_nano_dollar() -> None:
    price = Price(input=0.0028, output=0.0, cached_input=0.0)
    assert cost(price, 1, 0, 0) == 3e-9  # 2.8e-9 rounds to 3e-9
    assert cost(Price(0.1, 0.2, 0.0), 3, 3, 0) == 9e-7
    big = cost(Price(15.0, 75.0, 1.5), 10**9, 10**8, 10**8)
    assert big == 15.0 * 900 + 1.5 * 100 + 75.0 * 100


def test_openai_batches_cost_half_of_every_rate() -> None:
    table = PriceTable.shipped()
    assert table.batch_rate("openai") == 0.5
    assert table.batch_rate("OpenAI") == 0.5
    assert table.batch_price_of("gpt-4o", service="openai") == Price(1.25, 5.0, 0.625)
    assert table.batch_price_of("gpt-5-mini", service="openai") == Price(0.125, 1.0, 0.0125)
    standard = table.price_of("gpt-4.1")
    batch = table.batch_price_of("gpt-4.1-2025-04-14", service="openai")
    assert standard is not None
    assert batch is not None
    # 1000 prompt tokens (200 from the cache), 500 completion tokens: exactly half.
    assert cost(batch, 1000, 500, 200) == cost(standard, 1000, 500, 200) / 2


def test_a_service_without_a_batch_rate_or_a_model_without_a_price_has_no_batch_price() -> None:
    table = PriceTable.shipped()
    for service in ("groq", "together", "anthropic", "mock"):
        assert table.batch_rate(service) is None
        assert table.batch_price_of("llama-3.1-8b-instant", service=service) is None
    assert table.batch_price_of("house-model", service="openai") is None


def test_batch_prices_follow_overrides_and_per_provider_prices() -> None:
    table = PriceTable.shipped().with_overrides(
        {
            "house-model": PriceConfig(input=1.0, output=4.0),
            "eu/gpt-4o": PriceConfig(input=3.0, output=12.0, cached_input=1.5),
        }
    )
    assert table.batch_rate("openai") == 0.5
    assert table.batch_price_of("house-model", service="openai") == Price(0.5, 2.0, 0.5)
    assert table.batch_price_of("gpt-4o", service="openai", provider="eu") == Price(1.5, 6.0, 0.75)
    assert table.batch_price_of("gpt-4o", service="openai", provider="us") == Price(
        1.25, 5.0, 0.625
    )


def test_batch_price_scales_every_rate() -> None:
    assert batch_price(Price(2.0, 8.0, 0.5), 0.5) == Price(1.0, 4.0, 0.25)
    assert batch_price(Price(2.0, 8.0, 0.5), 1.0) == Price(2.0, 8.0, 0.5)


def test_a_table_made_by_hand_may_carry_batch_rates() -> None:
    table = PriceTable({"m": Price(1.0, 2.0, 1.0)}, batch={"Groq": 0.75})
    assert table.batch_price_of("m", service="groq") == Price(0.75, 1.5, 0.75)
    assert PriceTable({"m": Price(1.0, 2.0, 1.0)}).batch_price_of("m", service="openai") is None


@pytest.mark.parametrize("rate", [0, -0.5, 1.5, "half", True])
def test_a_price_file_with_a_bad_batch_rate_is_refused(rate: object) -> None:
    data = {
        "date": "2026-01-01",
        "source": "https://example.com",
        "models": {"m": {"input": 1.0, "output": 1.0}},
        "batch": {"openai": rate},
    }
    with pytest.raises(ValueError, match=r"batch\.'openai'"):
        pricing_file(data)


def test_a_price_file_without_batch_rates_has_none() -> None:
    data = {"date": "2026-01-01", "source": "https://example.com", "models": {}}
    _, batch, _, _ = pricing_file(data)
    assert dict(batch) == {}
    with pytest.raises(ValueError, match="service = rate"):
        pricing_file({**data, "batch": ["openai"]})
