"""InternLM2 training on megatron-core: typed config, FLOPs accounting, CPU shim, data, checkpoints, loop."""
