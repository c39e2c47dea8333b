"""Model presets (one registry per family) and the megatron-core model builder."""

from megatron_mmed.models.internlm2 import PRESETS, ModelPreset, get_preset, padded_vocab_size

__all__ = ["PRESETS", "ModelPreset", "get_preset", "padded_vocab_size"]
