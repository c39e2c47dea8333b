"""Thin CLI wrappers, one module per ``mmed`` subcommand (see ``megatron_mmed.cli``)."""
