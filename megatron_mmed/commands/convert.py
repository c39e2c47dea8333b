"""``mmed convert``: Hugging Face InternLM2/Llama <-> megatron-core checkpoints (see conversion/)."""

from __future__ import annotations

import argparse

HELP = (
    "convert checkpoints: hf-to-mcore (HF -> torch_dist init_from), mcore-to-hf (training ckpt -> HF, LoRA "
    "merged) or lora-to-peft (LoRA ckpt -> PEFT adapter)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION")
    sub.required = True
    a = sub.add_parser(
        "hf-to-mcore", help="HF folder -> weights-only torch_dist checkpoint for checkpoint.init_from"
    )
    a.add_argument("--hf", required=True, help="HF model folder (config.json + safetensors or .bin shards)")
    a.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    a.add_argument(
        "--layout",
        dest="family",
        default="auto",
        choices=["auto", "internlm2", "llama"],
        help="the HF family of --hf (default: from its config.json)",
    )
    a.add_argument("--preset", default=None, help="refuse unless the HF config matches this preset")
    a.add_argument(
        "--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: the weights' dtype"
    )
    a.add_argument(
        "--tp", type=int, default=1, help="pad the vocabulary as a run at this TP does (default 1)"
    )
    a.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    b = sub.add_parser("mcore-to-hf", help="torch_dist checkpoint (any TP/PP) -> HF folder")
    b.add_argument("--ckpt", required=True, help="run dir (uses latest), iter_* dir or converted weights dir")
    b.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    b.add_argument(
        "--layout",
        dest="family",
        required=True,
        choices=["llama", "internlm2"],
        help="the HF family to write",
    )
    b.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    b.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (default: latest)")
    b.add_argument("--preset", default=None, help="refuse unless the checkpoint was saved with this preset")
    b.add_argument("--tokenizer", default=None, help="tokenizer folder/file (default: the training blend's)")
    b.add_argument(
        "--vocab-size", type=int, default=None, help="real vocabulary (default: from the run config)"
    )
    c = sub.add_parser("lora-to-peft", help="LoRA fine-tuning checkpoint -> Hugging Face PEFT adapter")
    c.add_argument("--ckpt", required=True, help="LoRA run dir (uses latest) or one of its iter_* dirs")
    c.add_argument("--base", required=True, help="the HF base model folder (mcore-to-hf of the base weights)")
    c.add_argument("--out", required=True, help="adapter folder (must not exist unless --force)")
    c.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (default: latest)")
    for p in (a, b, c):
        p.add_argument("--force", action="store_true", help="overwrite an existing --out")
        p.add_argument(
            "--skip-validation", action="store_true", help="do not compare logits of source and target"
        )
        p.add_argument(
            "--atol", type=float, default=None, help="max |logit diff| (default by dtype; fp32 1e-4)"
        )


def run(args: argparse.Namespace) -> int:
    from conversion import hf_to_mcore, mcore_to_hf

    common = dict(out=args.out, force=args.force, skip_validation=args.skip_validation, atol=args.atol)
    if args.direction == "hf-to-mcore":
        report = hf_to_mcore(
            args.hf,
            family=args.family,
            preset=args.preset,
            dtype=args.dtype,
            tp=args.tp,
            make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
            **common,
        )
    elif args.direction == "lora-to-peft":
        from conversion.lora import lora_to_peft

        report = lora_to_peft(args.ckpt, args.base, iteration=args.iteration, **common)
    else:
        report = mcore_to_hf(
            args.ckpt,
            family=args.family,
            dtype=args.dtype,
            iteration=args.iteration,
            preset=args.preset,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            **common,
        )
    print(report.summary())
    return 0
