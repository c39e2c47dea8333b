"""Fine-tuning: packing efficiency on the dev QA files, and tokens/s + peak memory of one SFT step.

    .venv/bin/python -m benchmarks.finetune                      # packing + CPU steps (a few minutes)
    .venv/bin/python -m benchmarks.finetune --packing-only
    .venv/bin/python -m benchmarks.finetune --pack-length 2048 --cases mcore-full hf-full --rounds 3
    .venv/bin/python -m benchmarks.finetune --tokenizer internlm2/tokenizer.model

Packing: the real length distribution of ``../shared/data/qa`` (rationale + direct examples, the paper's
template) tokenized with ``--tokenizer`` (default: a SentencePiece model trained on those files, so token
counts are only indicative of InternLM2's), packed into 2048-token rows with the global batch of 128
examples, against padding.

Steps, at equal batch: both sides train on the same ``--examples`` real examples in one optimizer step (one
forward-backward over all of them, AdamW lr 1e-5, grad clip 1), full and LoRA (rank 16 on
qkv/proj/fc1/fc2), one thread each. megatron-core runs ``mmed finetune``'s CPU path (examples packed into rows
of ``--pack-length``, per-example attention, Megatron DDP + optimizer, see ``megatron_mmed.testing.sft``);
transformers + peft the paper's collation (right-padded micro-batches of ``--hf-micro-batch``). Tokens/s
counts the same real (non-padding) tokens on both sides, so padding is a cost, not a credit; each case runs
in its own process so its peak RSS is its own. ``tokens_per_cpu_s`` divides by the process's CPU time, which
a loaded machine distorts less than wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QA = REPO.parent / "shared" / "data" / "qa"
MODEL_SEQ = 2048
MODEL = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=MODEL_SEQ,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
CASES = ("mcore-full", "mcore-lora", "hf-full", "hf-lora")


def train_tokenizer(out: Path, vocab: int = 4000) -> Path:
    import io

    import sentencepiece as spm

    from eval.data import LANGUAGES, iter_json_lines

    texts = [
        " ".join([rec["question"], *rec["options"].values(), rec.get("rationale", "")])
        for lang in LANGUAGES
        for _, rec, _ in iter_json_lines(QA / f"{lang}.jsonl")
    ]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab,
        model_type="bpe",
        character_coverage=0.995,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        num_threads=1,
        max_sentence_length=50000,
        minloglevel=2,
    )
    out.write_bytes(buf.getvalue())
    return out


def packing(tokenizer: Path) -> dict:
    from megatron_mmed.finetune.config import SFTDataConfig
    from megatron_mmed.finetune.data import load_sft_data
    from megatron_mmed.finetune.packing import SFTBatches, packing_stats

    data = load_sft_data(SFTDataConfig(train=str(QA), tokenizer=str(tokenizer), max_length=2048))
    lengths = [len(e.tokens) for e in data.examples]
    kw = dict(seq_length=2048, global_batch_size=128, seed=42, pad_id=data.pad_id)
    rows = {
        "packed 2048, DP=1": packing_stats(SFTBatches(data.examples, **kw)),
        "packed 2048, DP=8": packing_stats(SFTBatches(data.examples, dp_size=8, **kw)),
        "padded to longest of 4": packing_stats(
            SFTBatches(data.examples, pack=False, micro_batch_size=4, **kw)
        ),
        "padded to 2048": packing_stats(SFTBatches(data.examples, pack=False, fixed_length=True, **kw)),
    }
    return {
        "examples": len(lengths),
        "mean_tokens": statistics.mean(lengths),
        "median_tokens": statistics.median(lengths),
        "max_tokens": max(lengths),
        "rows": {
            k: {
                "non_padding_share": v["non_padding_share"],
                "examples_per_row": v["examples_per_row"],
                "rows": v["rows"],
            }
            for k, v in rows.items()
        },
    }


def prepare(work: Path, tokenizer: Path, n_examples: int) -> None:
    """A random Llama of MODEL's shape (HF + converted), and ``n_examples`` short real examples."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conversion import hf_to_mcore
    from megatron_mmed.finetune.config import SFTDataConfig
    from megatron_mmed.finetune.data import load_sft_data

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**MODEL)).save_pretrained(work / "hf")
    hf_to_mcore(work / "hf", work / "mcore", skip_validation=True, force=True)
    data = load_sft_data(SFTDataConfig(train=str(QA), tokenizer=str(tokenizer), max_length=512))
    ex = [e for e in data.examples if len(e.tokens) <= 512][:n_examples]
    torch.save([(e.tokens.tolist(), e.prompt_len) for e in ex], work / "examples.pt")


def _examples(work: Path):
    import numpy as np
    import torch

    from megatron_mmed.finetune.data import SFTTokens

    return [
        SFTTokens(np.asarray(t), p, "x", False)
        for t, p in torch.load(work / "examples.pt", weights_only=True)
    ]


def run_case(case: str, work: Path, steps: int, mbs: int, pack_length: int) -> dict:
    import torch

    torch.set_num_threads(1)
    ex = _examples(work)
    real = sum(len(e.tokens) - 1 for e in ex)
    step = (
        _mcore_step(work, ex, "lora" in case, pack_length)
        if case.startswith("mcore")
        else _hf_step(work, ex, "lora" in case, mbs)
    )
    step()  # warm-up
    times, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    sec, cpu_sec = statistics.median(times), statistics.median(cpu)
    return {
        "case": case,
        "tokens_per_s": real / sec,
        "step_s": sec,
        "tokens_per_cpu_s": real / cpu_sec,  # one thread: ~tokens_per_s on a quiet machine, less load-bound
        "real_tokens": real,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _lora():
    from megatron_mmed.finetune.config import LoraConfig

    return LoraConfig(rank=16, alpha=32.0, dropout=0.0)


def _mcore_step(work: Path, ex, lora: bool, pack_length: int):
    """One step of ``mmed finetune``'s CPU path: the step's examples packed into rows of ``pack_length``
    (one row a micro-batch), megatron-core's schedule, Megatron DDP and optimizer (lr 1e-5, clip 1)."""
    import contextlib

    from megatron_mmed.common.distributed import mcore_session
    from megatron_mmed.finetune.packing import SFTBatches
    from megatron_mmed.testing.sft import mcore_sft, mcore_step

    stack = contextlib.ExitStack()
    stack.enter_context(mcore_session())
    _, ddp, opt = mcore_sft(
        work / "mcore", lr=1e-5, clip=1.0, lora=_lora() if lora else None, seq_length=MODEL_SEQ
    )
    mbs = SFTBatches(ex, pack_length, len(ex), seed=0).step(0).microbatches

    def step():
        mcore_step(ddp, opt, mbs, max(int(mb["tokens"].shape[1]) for mb in mbs))

    step.stack = stack  # keep the session open
    return step


def _hf_step(work: Path, ex, lora: bool, mbs: int):
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(work / "hf", dtype=torch.float32).train()
    if lora:
        from peft import LoraConfig, get_peft_model

        c = _lora()
        model = get_peft_model(
            model,
            LoraConfig(
                r=c.rank,
                lora_alpha=c.alpha,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            ),
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    batches = []
    for k in range(0, len(ex), mbs):
        chunk = ex[k : k + mbs]
        n = max(len(e.tokens) for e in chunk)
        ids = torch.zeros((len(chunk), n), dtype=torch.long)
        labels = torch.full((len(chunk), n), -100)
        att = torch.zeros((len(chunk), n), dtype=torch.long)
        for j, e in enumerate(chunk):
            t = torch.as_tensor(e.tokens)
            ids[j, : len(t)], att[j, : len(t)] = t, 1
            labels[j, e.prompt_len : len(t)] = t[e.prompt_len :]
        batches.append((ids, labels, att))
    total = sum(int((b[1] != -100).sum()) for b in batches)

    def step():
        opt.zero_grad()
        for ids, labels, att in batches:
            out = model(input_ids=ids, attention_mask=att, labels=labels)
            (out.loss * int((labels[:, 1:] != -100).sum()) / total).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=None)
    ap.add_argument("--packing-only", action="store_true")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--hf-micro-batch", type=int, default=4)
    ap.add_argument("--pack-length", type=int, default=512, help="packed row length of the CPU steps")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--rounds", type=int, default=1, help="run every case this many times, interleaved")
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.work, args.steps, args.hf_micro_batch, args.pack_length)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = args.tokenizer or train_tokenizer(work / "qa.model")
        print(json.dumps({"packing": packing(tok)}, indent=2))
        if args.packing_only:
            return
        prepare(work, tok, args.examples)
        results: dict[str, list[dict]] = {c: [] for c in args.cases}
        for _ in range(args.rounds):  # cases interleaved: a load that changes over time hits all alike
            for case in args.cases:
                r = _run_subprocess(case, work, args)
                print(json.dumps(r), flush=True)
                if "error" not in r:
                    results[case].append(r)
        print(json.dumps({"summary": _summary(results)}, indent=2))


def _run_subprocess(case: str, work: Path, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.finetune", "--case", case, "--work", str(work)]
    cmd += ["--steps", str(args.steps), "--hf-micro-batch", str(args.hf_micro_batch)]
    cmd += ["--pack-length", str(args.pack_length)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        return {"case": case, "error": r.stderr[-500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _summary(results: dict[str, list[dict]]) -> dict:
    """Per case the median over rounds; per setting megatron-core / transformers (> 1: ours faster)."""
    out = {
        case: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "rounds": len(rs),
        }
        for case, rs in results.items()
        if rs
    }
    for kind in ("full", "lora"):
        ours, theirs = out.get(f"mcore-{kind}"), out.get(f"hf-{kind}")
        if ours and theirs:
            out[f"{kind}: mcore / hf"] = {
                k: ours[k] / theirs[k] for k in ("tokens_per_s", "tokens_per_cpu_s", "peak_rss_mib")
            }
    return out


if __name__ == "__main__":
    main()
