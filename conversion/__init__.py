"""Hugging Face InternLM2/Llama <-> megatron-core torch_dist checkpoints, streamed and validated by logits.

``hf_to_mcore`` writes the weights-only format ``mmed train``'s ``checkpoint.init_from`` loads (plus
``model_config.yaml``, the preset it implies); ``mcore_to_hf`` reads a training checkpoint saved at any TP/PP.
"""

from conversion.run import ConversionReport, hf_to_mcore, mcore_to_hf

__all__ = ["ConversionReport", "hf_to_mcore", "mcore_to_hf"]
