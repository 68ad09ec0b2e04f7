"""Providers: the contract, the OpenAI-compatible client, presets and the mock provider."""

from .base import Provider, Timeouts
from .compatible import OpenAICompatibleProvider
from .mock import Fault, MockProvider
from .presets import PRESETS, Preset, get_preset
from .settings import ProviderSettings

__all__ = [
    "PRESETS",
    "Fault",
    "MockProvider",
    "OpenAICompatibleProvider",
    "Preset",
    "Provider",
    "ProviderSettings",
    "Timeouts",
    "get_preset",
]
