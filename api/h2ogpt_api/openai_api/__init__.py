"""The OpenAI-compatible front door: protocol models, streaming, routes, the app factory."""
