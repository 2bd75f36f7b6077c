"""llm-gateway: one OpenAI-compatible endpoint in front of every popular LLM inference server."""

__version__ = "0.1.0"
