"""SFT data: two examples per item, loss mask on the answer + EOS, counted skips/truncation, packing, order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from finetune_helpers import attention_mask, qa_record, train_sp, write_qa

from eval.prompts import sft_example
from megatron_mmed.common.errors import UserError
from megatron_mmed.finetune.config import SFTDataConfig
from megatron_mmed.finetune.data import SFTDataReport, SFTTokens, load_items, load_sft_data
from megatron_mmed.finetune.packing import (
    SFTBatches,
    cu_seqlens,
    epoch_order,
    first_fit,
    packing_stats,
)


@pytest.fixture(scope="module")
def sp(shared_data, tmp_path_factory):
    return train_sp(shared_data / "qa", tmp_path_factory.mktemp("sp") / "tok.model")


@pytest.fixture(scope="module")
def qa_data(shared_data, sp):
    return load_sft_data(SFTDataConfig(train=str(shared_data / "qa"), tokenizer=str(sp), max_length=2048))


def test_two_examples_per_item_direct_only_without_rationale(shared_data, qa_data):
    """English/Chinese/... dev files have empty rationales (direct example only); Spanish has all 80."""
    r = qa_data.report
    assert sum(r.items.values()) == 480 and sum(r.bad_items.values()) == 0
    with_rationale = sum(r.items[lang] - r.items_without_rationale[lang] for lang in r.items)
    assert r.items_without_rationale["English"] == 80 and r.items_without_rationale["Spanish"] == 0
    assert r.rationale_examples == with_rationale and r.direct_examples == 480
    assert r.examples == len(qa_data.examples) == 480 + with_rationale
    assert r.truncated_examples == 0 and r.dropped_prompt_too_long == 0


def test_tokens_are_bos_prompt_target_eos_and_mask_is_the_target(shared_data, sp, qa_data):
    """Decode the examples: BOS + prompt (no loss) then exactly the prompt module's target + EOS (loss)."""
    import sentencepiece as spm

    from eval.data import load_language

    proc = spm.SentencePieceProcessor(model_file=str(sp))
    item = load_language(shared_data / "qa/Spanish.jsonl", "Spanish").items[0]
    ex = next(e for e in qa_data.examples if e.language == "Spanish" and e.rationale)
    prompt, target = sft_example(item, rationale=True)
    t = ex.tokens.tolist()
    assert t[0] == proc.bos_id() and t[-1] == proc.eos_id() and proc.eos_id() not in t[:-1]
    assert proc.decode(t[1 : ex.prompt_len]) == prompt
    assert proc.decode(t[ex.prompt_len : -1]) == target
    assert target.startswith("###Rationale: ") and target.endswith("IS CORRECT.")
    # the batch's loss mask covers exactly the labels target + EOS
    b = SFTBatches([ex], seq_length=2048, global_batch_size=1, pack=False, pad_id=0).step(0)
    mb = b.microbatches[0]
    labels = mb["labels"][0][mb["loss_mask"][0].bool()].tolist()
    assert labels == t[ex.prompt_len :] and b.target_tokens == ex.num_target


def test_bad_items_are_counted_skips(tmp_path, sp):
    write_qa(
        tmp_path / "Train",
        "English",
        [
            qa_record(),
            {k: v for k, v in qa_record().items() if k != "answer_idx"},  # no answer_idx
            qa_record(answer="E"),  # letter not among the options
            qa_record(answer="A,D"),
            qa_record(rationale=""),
        ],
    )
    (tmp_path / "Train/English.jsonl").open("a").write("{not json\n")
    data = load_sft_data(SFTDataConfig(train=str(tmp_path), tokenizer=str(sp)))
    r = data.report
    assert r.items == {"English": 2} and r.bad_items == {"English": 4}
    assert r.bad_reasons == {"answer_idx missing or not among the options": 3, "not valid JSON": 1}
    assert r.items_without_rationale == {"English": 1} and r.examples == 3


def test_empty_or_missing_training_folder_is_a_one_line_error(tmp_path, sp):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"data.train: no MMedBench language files") as e:
        load_sft_data(SFTDataConfig(train=str(tmp_path / "empty"), tokenizer=str(sp)))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="is not a directory"):
        load_items(tmp_path / "nope")
    write_qa(tmp_path / "bad", "French", [qa_record(answer="Z")])
    with pytest.raises(UserError, match="no usable MMedBench items"):
        load_sft_data(SFTDataConfig(train=str(tmp_path / "bad"), tokenizer=str(sp)))
    with pytest.raises(UserError, match="data.tokenizer is required"):
        load_sft_data(SFTDataConfig(train=str(tmp_path / "bad")))


def test_truncation_is_counted_never_silent(tmp_path, sp):
    long_rationale = "la fiebre persistente " * 200
    write_qa(tmp_path, "Spanish", [qa_record(rationale=long_rationale), qa_record(question="x " * 400)])
    data = load_sft_data(SFTDataConfig(train=str(tmp_path), tokenizer=str(sp), max_length=300))
    r = data.report
    # item 1: its rationale example is cut (EOS lost), direct one fits; item 2: prompt alone is > 300
    assert r.truncated_examples == 1 and r.truncated_tokens > 0 and r.dropped_prompt_too_long == 2
    assert r.examples == 2 and max(len(e.tokens) for e in data.examples) == 300
    cut = next(e for e in data.examples if len(e.tokens) == 300)
    assert cut.tokens[-1] != data.eos_id and cut.num_target > 0
    report = r.write(tmp_path / "run" / "data_report.json")
    assert SFTDataReport.read(report) == r  # the writer's read-back
    assert "1 truncated to 300 tokens, 2 dropped" in r.summary()


def test_hf_tokenizer_json_is_accepted(tmp_path, shared_data):
    """The same loader as mmed tokenize: a HF tokenizer.json (its EOS/BOS from tokenizer_config.json)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["### Response: ###Answer: OPTION A IS CORRECT."] * 10, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    data = load_sft_data(
        SFTDataConfig(
            train=str(shared_data / "qa"), tokenizer=str(tmp_path / "tokenizer.json"), languages=("en",)
        )
    )
    assert data.eos_id == 2 and data.bos_id == 1
    assert all(e.tokens[0] == 1 and e.tokens[-1] == 2 for e in data.examples)


def _toy(lengths, prompt=3):
    return [
        SFTTokens(np.arange(1, n + 1, dtype=np.int64) + 10 * k, prompt, "English", False)
        for k, n in enumerate(lengths)
    ]


def test_first_fit_keeps_order_and_capacity():
    bins = first_fit([5, 7, 3, 2, 8, 1], 10)
    assert bins == [[0, 3], [1, 2], [4, 5]]  # each item into the fullest bin it fits (3 -> the 7's bin)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(b == sorted(b) for b in bins)
    with pytest.raises(ValueError, match="exceeds"):
        first_fit([11], 10)


def test_packed_rows_segments_positions_and_masks():
    ex = _toy([5, 4, 6])  # 4, 3, 5 positions
    b = SFTBatches(ex, seq_length=16, global_batch_size=3, seed=0, pack=True, pad_id=0, pad_to_multiple_of=1)
    mb = b.step(0).microbatches[0]
    assert mb["tokens"].shape == (1, 12)  # one row: all three examples
    seg = mb["segment_ids"][0].tolist()
    pos = mb["position_ids"][0].tolist()
    order = b.example_indices(0)[1].tolist()
    lens = [len(ex[i].tokens) - 1 for i in order]
    assert seg == sum(([k] * n for k, n in enumerate(lens)), [])
    assert pos == sum((list(range(n)) for n in lens), [])  # positions restart per example
    m = attention_mask(mb["segment_ids"])[0, 0]
    for i in range(12):
        for j in range(12):
            assert bool(m[i, j]) == (not (seg[i] == seg[j] and j <= i))
    assert cu_seqlens(mb["segment_ids"]).tolist() == [0, lens[0], lens[0] + lens[1], 12]
    # labels are each example's next tokens; loss from the last prompt position on
    at = 0
    for i in order:
        n = len(ex[i].tokens) - 1
        assert mb["labels"][0, at : at + n].tolist() == ex[i].tokens[1:].tolist()
        assert mb["loss_mask"][0, at : at + n].tolist() == [0.0] * (ex[i].prompt_len - 1) + [1.0] * (
            n - ex[i].prompt_len + 1
        )
        at += n


def test_padding_is_fallback_and_dp_ranks_get_equal_counts():
    ex = _toy([9, 9, 9, 3, 3])
    b = SFTBatches(
        ex,
        seq_length=8,
        global_batch_size=5,
        micro_batch_size=1,
        dp_size=2,
        seed=1,
        pad_id=0,
        pad_to_multiple_of=1,
    )
    s0, s1 = b.step(0, 0), b.step(0, 1)
    assert s0.num_microbatches == s1.num_microbatches == 2  # rows 8, 8, 8 and 2 + 2, dealt 2 / 2
    got = sorted(
        t for s in (s0, s1) for mb in s.microbatches for t in mb["tokens"][mb["segment_ids"] >= 0].tolist()
    )
    want = sorted(t for e in ex for t in e.tokens[:-1].tolist())
    assert got == want  # every example exactly once across the ranks
    assert s0.examples == 5 and s0.real_positions == 8 * 3 + 2 * 2
    assert s0.non_padding_share == 1.0
    odd = SFTBatches(
        _toy([9, 9, 9]), seq_length=8, global_batch_size=3, dp_size=2, seed=1, pad_to_multiple_of=1
    )
    r0, r1 = odd.step(0, 0), odd.step(0, 1)
    assert r0.num_microbatches == r1.num_microbatches == 2  # 3 rows + 1 empty row: equal counts
    assert r1.microbatches[1]["loss_mask"].sum() == 0 and (r1.microbatches[1]["segment_ids"] < 0).all()
    assert r0.non_padding_share == 24 / 25
    pad = SFTBatches(
        ex, seq_length=8, global_batch_size=5, seed=1, pack=False, pad_id=0, pad_to_multiple_of=4
    )
    assert pad.step(0).num_microbatches == 5 and pad.step(0).microbatches[3]["tokens"].shape[1] in (4, 8)


def test_epoch_order_is_seeded_and_resume_sees_the_same_examples():
    ex = _toy([4] * 10)
    a = SFTBatches(ex, seq_length=64, global_batch_size=4, seed=7)
    assert a.steps_per_epoch == 3  # 4 + 4 + 2
    seen = [a.example_indices(s)[1].tolist() for s in range(6)]
    assert sorted(sum(seen[:3], [])) == list(range(10)) and sorted(sum(seen[3:], [])) == list(range(10))
    assert seen[:3] != seen[3:]  # a new order per epoch
    resumed = SFTBatches(ex, seq_length=64, global_batch_size=4, seed=7)  # a fresh process at step 4
    assert resumed.example_indices(4)[1].tolist() == seen[4]
    for k in ("tokens", "labels", "loss_mask", "position_ids", "segment_ids"):
        assert torch.equal(resumed.step(4).microbatches[0][k], a.step(4).microbatches[0][k])
    assert epoch_order(10, 7, 0).tolist() != epoch_order(10, 8, 0).tolist()


def test_packing_efficiency_on_the_dev_qa_files(qa_data):
    """Packing the real length distribution into 2048-token rows wastes little; padding wastes a lot."""
    kw = dict(seq_length=2048, global_batch_size=128, seed=42, pad_id=0)
    packed = packing_stats(SFTBatches(qa_data.examples, **kw))
    padded = packing_stats(SFTBatches(qa_data.examples, pack=False, micro_batch_size=4, **kw))
    assert packed["non_padding_share"] > 0.9 and packed["examples_per_row"] > 3
    assert padded["non_padding_share"] < packed["non_padding_share"]


def test_tokenizer_that_does_not_match_the_checkpoint_is_refused(tmp_path, sp, qa_data):
    """A 3,000-id tokenizer against a 300-id checkpoint, and the right size but another EOS id."""
    from convert_helpers import save_llama, tiny_llama

    from conversion import hf_to_mcore
    from megatron_mmed.finetune.data import check_tokenizer

    hf_to_mcore(save_llama(tiny_llama(), tmp_path / "small"), tmp_path / "small_mc", skip_validation=True)
    with pytest.raises(
        UserError, match=r"data.tokenizer has 3,000 ids but checkpoint.init_from .* vocabulary of 300"
    ):
        check_tokenizer(qa_data, tmp_path / "small_mc")
    hf_to_mcore(
        save_llama(tiny_llama(vocab_size=3072, eos_token_id=7), tmp_path / "eos"),
        tmp_path / "eos_mc",
        skip_validation=True,
    )
    with pytest.raises(UserError, match="EOS is 2 but .* converted with 7"):
        check_tokenizer(qa_data, tmp_path / "eos_mc")
    hf_to_mcore(
        save_llama(tiny_llama(vocab_size=3072), tmp_path / "ok"), tmp_path / "ok_mc", skip_validation=True
    )
    check_tokenizer(qa_data, tmp_path / "ok_mc")  # BOS 1 / EOS 2 as converted


def test_packed_seq_params_for_the_gpu_thd_path():
    """megatron-core's PackedSeqParams (THD): one sequence per example plus the padding tail, int32 offsets."""
    from megatron_mmed.finetune.packing import packed_seq_params

    b = SFTBatches(_toy([5, 4, 6]), seq_length=16, global_batch_size=3, seed=0, pad_to_multiple_of=16)
    seg = b.step(0).microbatches[0]["segment_ids"]
    p = packed_seq_params(seg)
    assert p.qkv_format == "thd" and p.cu_seqlens_q.dtype == torch.int32
    assert torch.equal(p.cu_seqlens_q, p.cu_seqlens_kv) and int(p.cu_seqlens_q[-1]) == 16
    assert p.cu_seqlens_q.tolist()[:-1] == [0, *np.cumsum([int((seg == k).sum()) for k in range(3)]).tolist()]
    assert p.max_seqlen_q == max(4, 3, 5, 16 - 12)
    with pytest.raises(ValueError, match="micro_batch_size=1"):
        packed_seq_params(torch.zeros(2, 8, dtype=torch.long))
