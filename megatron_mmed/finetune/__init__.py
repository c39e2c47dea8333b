"""Supervised fine-tuning on MMedBench (full and LoRA) on megatron-core: config, SFT data, LoRA adapters."""
