"""Providers, role kinds and audit sinks as pluggy plugins found through entry points.

``hookspecs`` says what a plugin may register and how registrations combine; ``manager``
loads built-ins and third-party plugins alike into a ``Registry``; ``builtin`` holds the
OpenAI-compatible and Ollama providers and the owner/critic/judge role kinds."""
