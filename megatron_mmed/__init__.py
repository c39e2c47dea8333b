"""megatron-mmed: multilingual medical LLMs on megatron-core.

Shared building blocks live in ``megatron_mmed.common``; the pipeline stages live in the top-level
packages ``preprocessing``, ``megatron_mmed`` (training), ``conversion`` and ``eval``.
"""

__version__ = "0.1.0"
