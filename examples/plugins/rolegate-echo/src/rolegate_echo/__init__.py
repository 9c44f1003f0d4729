"""rolegate-echo: an example rolegate plugin."""
