"""Where models live: the llama.cpp servers rolegate starts, and the memory they share.

A model with a ``server`` is served by a llama.cpp server that rolegate starts (``rolegate
up``, or on demand when ``residency`` is declared) on its provider's loopback port. The
policy's ``residency`` section makes what is loaded part of every decision: HOT models stay
resident, WARM ones are loaded on demand and evicted least recently used when memory would
be exceeded, COLD ones are never loaded automatically.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from rolegate.policy.strict import Strict

Args = tuple[str, ...]


class Draft(Strict):
    """A draft model for speculative decoding; it must share the target's vocabulary
    (``rolegate check`` compares the two files' tokenizers)."""

    gguf: str = Field(min_length=1, description="The draft's GGUF file, relative to the policy.")
    max: int | None = Field(default=None, ge=1, le=256, description="Tokens drafted per step.")
    min: int | None = Field(default=None, ge=0, le=256)
    p_min: float | None = Field(default=None, ge=0, le=1, description="Greedy probability floor.")
    ctx_size: int | None = Field(default=None, gt=0)


class LlamaServer(Strict):
    """A llama.cpp server for one model, on the port of the model's provider ``base_url``."""

    gguf: str = Field(min_length=1, description="The model's GGUF file, relative to the policy.")
    binary: str | None = Field(
        default=None,
        description="The llama-server executable. Default: $ROLEGATE_LLAMA_SERVER, else "
        "'llama-server' on PATH.",
    )
    ctx_size: int | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, ge=1, le=1024)
    parallel: int | None = Field(default=None, ge=1, le=256, description="Slots (-np).")
    draft: Draft | None = None
    lookup: bool = Field(default=False, description="Prompt lookup decoding (n-gram drafts).")
    speculative: bool = Field(
        default=True,
        description="False forbids any speculative decoding (no draft, no lookup): SSM and "
        "hybrid models need consecutive positions.",
    )
    args: Args = Field(default=(), description="More llama-server arguments, passed as given.")

    @model_validator(mode="after")
    def _speculation(self) -> LlamaServer:
        if not self.speculative and (self.draft is not None or self.lookup):
            raise ValueError("'speculative: false' forbids a 'draft' and 'lookup'")
        return self


class Residency(Strict):
    """The memory models may use together, and what a load may cost a call."""

    memory_gb: float = Field(gt=0, description="Memory the resident models may use together.")
    load_timeout_s: float = Field(
        default=300,
        gt=0,
        le=3600,
        description="A call whose model is not loaded within this is refused (LOAD_TIMEOUT).",
    )
    prefer_resident: bool = Field(
        default=True,
        description="Among equally cheap sufficient models, route to one already loaded.",
    )
