"""Raw multilingual text -> MMedC-style medical corpus -> Megatron indexed binaries.

Stages (each one ``mmed`` subcommand): prep (ingest, clean, language ID, medical and quality filters),
dedup, decontam, tokenize. The folder layouts between them are described in ``preprocessing.layout``.
"""
