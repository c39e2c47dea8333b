"""Every bad conversion input gives one clear UserError and leaves nothing half-written behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from convert_helpers import save_llama, tiny_llama

from conversion import hf_to_mcore, mcore_to_hf
from megatron_mmed.common.errors import UserError

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_llama(tiny_llama(), tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="module")
def mcore_dir(llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mc") / "mcore"
    hf_to_mcore(llama_dir, out, skip_validation=True)
    return out


def _copy(src, dst, edit=None):
    shutil.copytree(src, dst)
    if edit:
        cfg = json.loads((dst / "config.json").read_text())
        edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _nothing_left(parent, name):
    return not (parent / name).exists() and not list(parent.glob(f".{name}.tmp-*"))


def test_folder_without_config_or_weights(llama_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        hf_to_mcore(bare, tmp_path / "out")
    shutil.copy(llama_dir / "config.json", bare / "config.json")
    with pytest.raises(UserError, match="no weights"):
        hf_to_mcore(bare, tmp_path / "out")
    with pytest.raises(UserError, match="not a directory"):
        hf_to_mcore(tmp_path / "nope", tmp_path / "out")
    assert _nothing_left(tmp_path, "out")


def test_config_weight_shape_mismatch(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "bad", lambda c: c.update(intermediate_size=128))
    with pytest.raises(
        UserError, match=r"mlp.gate_proj.weight has shape \(96, 64\), config.json implies \(128, 64\)"
    ):
        hf_to_mcore(bad, tmp_path / "out")
    assert _nothing_left(tmp_path, "out")


def test_heads_not_divisible_by_kv_heads(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "bad", lambda c: c.update(num_key_value_heads=3))
    with pytest.raises(
        UserError, match=r"num_attention_heads \(8\) is not divisible by num_key_value_heads \(3\)"
    ):
        hf_to_mcore(bad, tmp_path / "out")


def test_missing_and_unexpected_keys_are_listed(llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _copy(llama_dir, tmp_path / "bad")
    sd = load_file(str(bad / "model.safetensors"))
    sd.pop("model.layers.1.mlp.up_proj.weight")
    sd["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError) as e:
        hf_to_mcore(bad, tmp_path / "out")
    msg = str(e.value)
    assert "missing keys (1): model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected keys (1): model.layers.0.self_attn.q_norm.weight" in msg


def test_not_llama_and_wrong_layout(llama_dir, tmp_path):
    bad = _copy(
        llama_dir, tmp_path / "bad", lambda c: c.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    )
    with pytest.raises(UserError, match="neither Llama nor InternLM2"):
        hf_to_mcore(bad, tmp_path / "out")
    with pytest.raises(UserError, match="--layout internlm2 asked, but the folder is in the llama layout"):
        hf_to_mcore(llama_dir, tmp_path / "out", family="internlm2")


def test_preset_mismatch_both_ways(llama_dir, mcore_dir, tmp_path):
    with pytest.raises(UserError, match="does not match preset 'internlm2-1.8b'.*hidden_size: 64 vs 2048"):
        hf_to_mcore(llama_dir, tmp_path / "out", preset="internlm2-1.8b")
    with pytest.raises(UserError, match="saved with model 'hf:llama'.*does not match preset 'tiny'"):
        mcore_to_hf(mcore_dir, tmp_path / "hf", family="llama", preset="tiny")
    assert _nothing_left(tmp_path, "hf")


def test_checkpoint_whose_config_disagrees_with_its_tensors(mcore_dir, tmp_path):
    bad = tmp_path / "ck"
    shutil.copytree(mcore_dir, bad)
    text = (bad / "model_config.yaml").read_text().replace("ffn_hidden_size: 96", "ffn_hidden_size: 128")
    (bad / "model_config.yaml").write_text(text)
    with pytest.raises(UserError, match="linear_fc1.weight: checkpoint \\(2, 192, 64\\) vs \\(2, 256, 64\\)"):
        mcore_to_hf(bad, tmp_path / "hf", family="llama")


def test_not_a_checkpoint_and_missing_iteration(mcore_dir, tmp_path):
    with pytest.raises(UserError, match="not a torch_dist checkpoint"):
        mcore_to_hf(tmp_path, tmp_path / "hf", family="llama")
    with pytest.raises(UserError, match="no checkpoint for iteration 7"):
        mcore_to_hf(mcore_dir, tmp_path / "hf", family="llama", iteration=7)


def test_existing_output_refused_unless_force(llama_dir, mcore_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists \\(use --force to overwrite\\)"):
        mcore_to_hf(mcore_dir, out, family="llama", skip_validation=True)
    assert (out / "keep.txt").is_file()
    mcore_to_hf(mcore_dir, out, family="llama", skip_validation=True, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_failed_validation_leaves_nothing(mcore_dir, tmp_path):
    with pytest.raises(UserError, match="validation FAILED.*nothing was written"):
        mcore_to_hf(mcore_dir, tmp_path / "hf", family="llama", dtype="bf16", atol=1e-9)
    assert _nothing_left(tmp_path, "hf")


def test_cli_prints_one_line_and_exits_2(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "megatron_mmed.cli",
        "convert",
        "hf-to-mcore",
        "--hf",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"mmed convert: error: {tmp_path}: no config.json"


@pytest.mark.slow
def test_cli_both_ways(llama_dir, tmp_path):
    """The `mmed convert` contract end to end in fresh processes (torch_dist's writer re-imports __main__)."""
    from transformers import LlamaForCausalLM

    base = [sys.executable, "-m", "megatron_mmed.cli", "convert"]
    a = subprocess.run(
        [*base, "hf-to-mcore", "--hf", str(llama_dir), "--out", str(tmp_path / "mc")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert a.returncode == 0, a.stderr[-3000:]
    assert "validation OK" in a.stdout and "fixed ids" in a.stdout
    b = subprocess.run(
        [
            *base,
            "mcore-to-hf",
            "--ckpt",
            str(tmp_path / "mc"),
            "--out",
            str(tmp_path / "hf"),
            "--layout",
            "llama",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert b.returncode == 0, b.stderr[-3000:]
    assert "validation OK" in b.stdout
    _, info = LlamaForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def _cut(data: bytes, how: str) -> bytes:
    n = int.from_bytes(data[:8], "little")
    return {
        "8 bytes short of the length": data[:5],
        "inside the header": data[: 8 + n // 2],
        "garbled header": data[:8] + b"\xff\xfe" * (n // 2) + data[8 + n :],
        "huge header length": (2**62).to_bytes(8, "little") + data[8:],
        "header not an object": len(b"[1, 2]").to_bytes(8, "little") + b"[1, 2]" + data[8 + n :],
        "data cut short": data[: len(data) // 2],
    }[how]


@pytest.mark.parametrize(
    "how",
    [
        "8 bytes short of the length",
        "inside the header",
        "garbled header",
        "huge header length",
        "header not an object",
        "data cut short",
    ],
)
def test_truncated_or_garbled_safetensors_is_one_line_error(llama_dir, tmp_path, how):
    bad = _copy(llama_dir, tmp_path / "bad")
    st = bad / "model.safetensors"
    st.write_bytes(_cut(st.read_bytes(), how))
    with pytest.raises(UserError, match=r"model\.safetensors: (not a valid safetensors file|truncated)"):
        hf_to_mcore(bad, tmp_path / "out", skip_validation=True)
    assert _nothing_left(tmp_path, "out")


def test_cli_truncated_safetensors_exits_2_without_traceback(llama_dir, tmp_path):
    bad = _copy(llama_dir, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:100])
    cmd = [sys.executable, "-m", "megatron_mmed.cli", "convert", "hf-to-mcore", "--hf", str(bad)]
    res = subprocess.run([*cmd, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("mmed convert: error: ")
    assert _nothing_left(tmp_path, "o")


def test_safetensors_with_overlapping_tensors_is_refused(llama_dir, tmp_path):
    """Two tensors pointing at the same bytes (a file no writer produces) are refused by safetensors' own
    header checks, not read twice as if they were two weights."""
    bad = _copy(llama_dir, tmp_path / "bad")
    st = bad / "model.safetensors"
    data = st.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"
    assert header[a]["shape"] == header[b]["shape"] and header[a]["data_offsets"] != header[b]["data_offsets"]
    header[b]["data_offsets"] = header[a]["data_offsets"]
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= n
    raw += b" " * (n - len(raw))  # same header length: only the offsets changed
    st.write_bytes(data[:8] + raw + data[8 + n :])
    with pytest.raises(UserError, match=r"model\.safetensors: not a valid safetensors file"):
        hf_to_mcore(bad, tmp_path / "out", skip_validation=True)
    assert _nothing_left(tmp_path, "out")


def test_each_conversion_saves_its_typed_config_beside_the_output(llama_dir, mcore_dir, tmp_path):
    """config.yaml beside every conversion output reads back as the config that made it."""
    from conversion.config import HfToMcoreConfig, McoreToHfConfig
    from megatron_mmed.common.config import load_config

    saved = load_config(HfToMcoreConfig, mcore_dir / "config.yaml")
    assert saved == HfToMcoreConfig(hf=str(llama_dir), out=str(mcore_dir), skip_validation=True)
    out = tmp_path / "hf"
    mcore_to_hf(mcore_dir, out, family="llama", dtype="fp32", skip_validation=True, max_shard_bytes=40_000)
    back = load_config(McoreToHfConfig, out / "config.yaml")
    assert back == McoreToHfConfig(
        ckpt=str(mcore_dir), out=str(out), dtype="fp32", skip_validation=True, max_shard_bytes=40_000
    )


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"tp": 0}, "--tp must be >= 1"),
        ({"make_vocab_size_divisible_by": 0}, "--make-vocab-size-divisible-by must be >= 1"),
        ({"dtype": "fp8"}, "--dtype 'fp8': choose one of"),
        ({"atol": -1.0}, "--atol must be > 0"),
    ],
)
def test_bad_conversion_settings_are_config_errors(llama_dir, tmp_path, kwargs, msg):
    from megatron_mmed.common.config import ConfigError

    with pytest.raises(ConfigError, match=msg):
        hf_to_mcore(llama_dir, tmp_path / "out", **kwargs)
    assert _nothing_left(tmp_path, "out")
