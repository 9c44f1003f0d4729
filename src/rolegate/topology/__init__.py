"""The machine the models live on: llama.cpp servers rolegate starts, what is resident,
and whether a draft model can serve its target."""
