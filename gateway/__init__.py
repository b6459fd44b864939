"""agent-gateway: an OpenAI-compatible gateway in front of LLM providers."""

__version__ = "0.1.0"
