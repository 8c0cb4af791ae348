"""HTTP handlers: the OpenAI-compatible surface and the operations endpoints."""
