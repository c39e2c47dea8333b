"""``PrefixKV`` attention on real (tiny, random) transformers models (a Llama; a Qwen2, whose projections have
biases) gives the logits of plain forwards over the whole sequences: prefixes of different lengths kept once, rows
without a prefix, right-padded prompt passes (the last layer computed at each row's last position only), decode
steps in one or several length buckets; through transformers' forward and through ``eval/llama_forward.py``."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from eval import prefix_kv
from eval.llama_forward import LlamaForward
from eval.prefix_kv import PrefixKV, prefix_kv_attention

SIZE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SIZE)).eval()


@pytest.fixture(scope="module")
def qwen2():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SIZE)).eval()
    with torch.no_grad():  # initialised to zero: random, so that a forward that drops them fails
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    return model


def _ids(n, seed):
    return torch.randint(3, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


PREFIXES = [_ids(30, 1), _ids(25, 2)]
# (prefix id or None, own tokens): rows of two prefixes of different lengths, one row without a prefix
ROWS = [(0, _ids(40, 10)), (0, _ids(12, 11)), (1, _ids(33, 12)), (None, _ids(50, 13)), (1, _ids(5, 14))]
NEW = [7, 8, 9, 10]


def _forward(model, kv, ids, positions, last):
    if isinstance(model, LlamaForward):
        return model(torch.tensor(ids), positions, kv, torch.as_tensor(last))
    out = model(input_ids=torch.tensor(ids), position_ids=positions, use_cache=False, prefix_kv=kv).logits
    return out[torch.arange(len(ids)), last]


def _run(model, keep=None):
    """Logits after each row's prompt and after each of ``NEW`` fed to every row (only buffer rows ``keep`` from
    the third on), rows in the buffer (longest own part first), through ``PrefixKV``; and the number of decode
    buckets it used at first."""
    order = sorted(range(len(ROWS)), key=lambda r: -len(ROWS[r][1]))
    slot = {r: i for i, r in enumerate(order)}
    kv = PrefixKV(
        len(ROWS), max(len(own) for _, own in ROWS) + len(NEW), last_layer=SIZE["num_hidden_layers"] - 1
    )
    logits = [None] * len(ROWS)
    written_out = isinstance(model, LlamaForward)  # calls PrefixKV itself
    with torch.inference_mode(), nullcontext() if written_out else prefix_kv_attention(model):
        kv.prefixes([len(h) for h in PREFIXES])
        width = max(len(h) for h in PREFIXES)
        _forward(model, kv, [h + [0] * (width - len(h)) for h in PREFIXES], torch.arange(width)[None], [0, 0])
        for pid in (0, 1, None):  # one right-padded prompt pass per prefix
            rows = [r for r, (p, _) in enumerate(ROWS) if p == pid]
            width = max(len(ROWS[r][1]) for r in rows)
            ids = [ROWS[r][1] + [0] * (width - len(ROWS[r][1])) for r in rows]
            start = len(PREFIXES[pid]) if pid is not None else 0
            last = torch.tensor([len(ROWS[r][1]) - 1 for r in rows])
            kv.prompt([slot[r] for r in rows], pid, last)  # the last layer at each row's last position only
            got = _forward(model, kv, ids, (start + torch.arange(width))[None].expand(len(rows), -1), last)
            for r, row in zip(rows, got, strict=True):
                logits[r] = row
        steps = [dict(enumerate(logits[r] for r in order))]  # per step: buffer row -> logits
        own = torch.tensor([len(ROWS[r][1]) for r in order])
        full = torch.tensor([len(ROWS[r][1]) + (len(PREFIXES[ROWS[r][0]]) if ROWS[r][0] is not None else 0)
                             for r in order])  # fmt: skip
        alive = list(range(len(ROWS)))  # decode row -> buffer row
        for i, tok in enumerate(NEW):
            if keep is not None and i == 2:  # the other rows finished
                kv.keep_rows(torch.tensor(keep))
                alive = [alive[j] for j in keep]
            at = torch.tensor(alive)
            kv.step(own[at] + i)
            if i == 0:
                buckets = len(kv._plan.buckets)
            got = _forward(model, kv, [[tok]] * len(alive), (full[at] + i)[:, None], [0] * len(alive))
            steps.append(dict(zip(alive, got, strict=True)))
    return order, steps, buckets


@pytest.mark.parametrize("forward", ["transformers", "own"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("bucket_cost", [0, 10**9], ids=["buckets", "one-bucket"])
def test_prefix_kv_equals_plain_forward(request, family, forward, bucket_cost, monkeypatch):
    monkeypatch.setattr(prefix_kv, "BUCKET_COST", bucket_cost)
    model = request.getfixturevalue(family)
    order, steps, buckets = _run(model if forward == "transformers" else LlamaForward.of(model))
    assert (buckets > 2) if bucket_cost == 0 else (buckets == 1)
    _check(model, order, steps)


@pytest.mark.parametrize("keep", [[1, 2, 4], [0]], ids=["prefixed-rows-left", "unprefixed-row-left"])
def test_finished_rows_leave_the_decode_batch(llama, keep, monkeypatch):
    """After ``keep_rows`` the rows left decode on as before: rows of both prefixes (the row without one gone), or
    the row without a prefix alone."""
    monkeypatch.setattr(prefix_kv, "BUCKET_COST", 0)
    order, steps, _ = _run(LlamaForward.of(llama), keep)
    assert sorted(steps[-1]) == keep
    _check(llama, order, steps)


def _check(model, order, steps):
    """Each buffer row's logits in ``steps`` are those of a plain forward over its whole sequence."""
    for row, r in enumerate(order):
        pid, own = ROWS[r]
        seq = (PREFIXES[pid] if pid is not None else []) + own + NEW
        with torch.inference_mode():
            want = model(input_ids=torch.tensor([seq])).logits[0, len(seq) - len(NEW) - 1 :]
        got = torch.stack([s[row] for s in steps if row in s])
        torch.testing.assert_close(got, want[: len(got)], rtol=1e-4, atol=1e-5)


def test_prefixes_in_one_pass():
    kv = PrefixKV(2, 4)
    kv.prefixes([3, 2])
    with pytest.raises(ValueError, match="one pass, once"):
        kv.prefixes([4])


@pytest.fixture(scope="module")
def english(shared_data):
    """The English questions: what the tiny HF models' tokenizers are trained on."""
    import json

    return [
        json.loads(x)["question"] for x in (shared_data / "qa" / "English.jsonl").read_text().splitlines()
    ]


def test_backend_keeps_transformers_cache_for_sliding_window(tmp_path, english):
    """A model ``PrefixKV`` cannot serve (here a sliding-window Mistral: its attention needs a window mask) fails
    the backend's probe, so generation does not take it (tests/test_eval_run.py checks what it takes instead);
    a Llama passes it."""
    from eval.backends import HFBackend
    from megatron_mmed.testing.tiny_hf import build_tiny_model

    llama = HFBackend(build_tiny_model(tmp_path / "llama", english, vocab_size=400))
    assert llama.prefix_kv
    build_tiny_model(tmp_path / "mistral", english, vocab_size=400, sliding_window=4)
    backend = HFBackend(tmp_path / "mistral")
    assert not backend.prefix_kv


def test_forward_written_out_only_for_the_llama_layout(llama, tmp_path, english, monkeypatch):
    """``LlamaForward.of`` takes a Llama and refuses a layout it does not write out (Qwen3: norms on the query
    and key heads); a written-out forward that is wrong fails the backend's probe, which then runs PrefixKV on
    transformers' forward."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from eval import llama_forward
    from eval.backends import HFBackend
    from megatron_mmed.testing.tiny_hf import build_tiny_model

    assert LlamaForward.of(llama) is not None
    assert LlamaForward.of(Qwen3ForCausalLM(Qwen3Config(**SIZE, head_dim=16))) is None
    model_dir = build_tiny_model(tmp_path / "llama", english, vocab_size=400)
    assert HFBackend(model_dir).own_forward
    monkeypatch.setattr(llama_forward, "_rotate_half", lambda x: x)  # a rotary embedding gone wrong
    backend = HFBackend(model_dir)
    assert backend.prefix_kv and not backend.own_forward
