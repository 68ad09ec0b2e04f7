"""leapasgi: one OpenAI-compatible front door to many LLM providers."""

__version__ = "0.1.0"
