"""airgap-proxy: an OpenAI-compatible reverse proxy that keeps LLM traffic local."""

__version__ = "0.1.0"
