"""torchrun worker for test_finetune_lora_tp: one LoRA step at TP=2 (and TP=2 + sequence parallel) on gloo.

Usage: torchrun --nproc_per_node=2 tests/lora_tp_worker.py MCORE_DIR ADAPTERS_IN BATCH_FILE OUT_DIR
Writes OUT_DIR/{tp2,tp2sp}/ (the adapters after the step) and OUT_DIR/losses.json (rank 0).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from finetune_helpers import mcore_sft, mcore_step

from megatron_mmed.common.cpu_shim import cpu_shim
from megatron_mmed.finetune.adapters import load_adapters, read_adapter_meta, save_adapters


def main(mcore_dir: str, adapters: str, batch_file: str, out: str) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    meta = read_adapter_meta(adapters)
    mbs = torch.load(batch_file, weights_only=True)
    losses = {}
    with cpu_shim():
        torch.distributed.init_process_group("gloo")
        for name, sp in (("tp2", False), ("tp2sp", True)):
            ps.initialize_model_parallel(tensor_model_parallel_size=2)
            model_parallel_cuda_manual_seed(0, force_reset_rng=True)
            model, ddp, opt = mcore_sft(Path(mcore_dir), lr=1e-2, lora=meta.lora, sequence_parallel=sp)
            load_adapters(adapters, model)
            losses[name] = mcore_step(ddp, opt, mbs, mbs[0]["tokens"].shape[1])
            save_adapters(Path(out) / name, model, meta.lora, meta.base)
            ps.destroy_model_parallel()
        if int(os.environ["RANK"]) == 0:
            (Path(out) / "losses.json").write_text(json.dumps(losses))
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
