"""Providers: the contract, the OpenAI-compatible client, presets, the mock provider, and
retries for a provider used on its own."""

from .base import Capabilities, NativeProvider, Provider, Timeouts, WireProtocol
from .compatible import OpenAICompatibleProvider
from .mock import Fault, MockProvider
from .presets import PRESETS, Preset, get_preset
from .retrying import Retrying
from .settings import ProviderSettings

__all__ = [
    "PRESETS",
    "Capabilities",
    "Fault",
    "MockProvider",
    "NativeProvider",
    "OpenAICompatibleProvider",
    "Preset",
    "Provider",
    "ProviderSettings",
    "Retrying",
    "Timeouts",
    "WireProtocol",
    "get_preset",
]
