"""LiveAlign: online LLM serving that learns from its users' live feedback."""

__version__ = "0.1.0"
