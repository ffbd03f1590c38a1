"""Ray Serve app: OpenAI-compatible chat on vLLM, the feedback API, adapter routing."""
