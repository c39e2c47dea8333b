"""Checkpoints verify on load: a manifest of sizes and checksums (fallback to the newest intact `iter_*` on
resume, a one-line error elsewhere), and `.metadata` read with a restricted unpickler."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from megatron_mmed.common.config import load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.training.config import TrainConfig

pytestmark = pytest.mark.timeout(300)

COMMON = [
    "model.seq_length=32",
    "train.micro_batch_size=2",
    "train.global_batch_size=2",
    "train.steps=4",
    "checkpoint.save_interval=2",
    "schedule.warmup_steps=0",
    "logging.log_interval=1",
    "logging.eval_iters=0",
]


@pytest.fixture(scope="module")
def tok(shared_data, tmp_path_factory):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    return write_byte_level_blend(shared_data / "corpus", tmp_path_factory.mktemp("tok"), ["en", "es"], 20)


def _cfg(repo_root, tok, run, *extra):
    return load_config(
        TrainConfig,
        repo_root / "configs/train/tiny_cpu.yaml",
        [f"data.blend={tok}", f"checkpoint.dir={run}", *COMMON, *extra],
    )


@pytest.fixture(scope="module")
def finished_run(repo_root, tok, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4, and its losses."""
    from megatron_mmed.training.loop import train

    run = tmp_path_factory.mktemp("base") / "run"
    result = train(_cfg(repo_root, tok, run))
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000002", "iter_0000004"]
    return run, result.losses


def _distcp(folder):
    return sorted(folder.glob("*.distcp"))[0]


def _flip_8_bytes(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(255 - b for b in data[mid : mid + 8])
    path.write_bytes(bytes(data))


DAMAGE = {
    "latest empty": lambda run: (run / "latest").write_text(""),
    "latest binary": lambda run: (run / "latest").write_bytes(b"\x00\xff\xfe\x80iter"),
    "newest file missing": lambda run: _distcp(run / "iter_0000004").unlink(),
    "newest file truncated": lambda run: _distcp(run / "iter_0000004").write_bytes(
        _distcp(run / "iter_0000004").read_bytes()[:1000]
    ),
    "newest .metadata missing": lambda run: (run / "iter_0000004" / ".metadata").unlink(),
    "8 bytes corrupted in a .distcp": lambda run: _flip_8_bytes(_distcp(run / "iter_0000004")),
    "a save killed mid-write": lambda run: shutil.copytree(run / "iter_0000004", run / "iter_0000006.tmp"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_resume_falls_back_to_the_newest_intact_checkpoint(
    repo_root, tok, finished_run, tmp_path, capsys, how
):
    from megatron_mmed.training.loop import train

    base, losses = finished_run
    run = tmp_path / "run"
    shutil.copytree(base, run)
    DAMAGE[how](run)
    expect = 4 if how.startswith(("latest", "a save")) else 2  # iter_4 itself is intact
    result = train(_cfg(repo_root, tok, run))
    err = capsys.readouterr().err
    assert result.start_step == expect and result.end_step == 4
    if expect == 2 or how.startswith("latest"):
        assert "warning" in err and ("damaged" in err or "latest" in err), err[-2000:]
    assert not list(run.glob("*.tmp"))  # a partial save is removed, never loaded
    assert {s: result.losses[s] for s in range(expect + 1, 5)} == {s: losses[s] for s in range(expect + 1, 5)}
    assert (run / "latest").read_text().strip() == "iter_0000004"


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(repo_root, tok, finished_run, tmp_path):
    from megatron_mmed.training.loop import train

    base, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(base, run)
    for it in ("iter_0000002", "iter_0000004"):
        _flip_8_bytes(_distcp(run / it))
    with pytest.raises(UserError, match="no intact checkpoint to resume from.*checksum differs"):
        train(_cfg(repo_root, tok, run))


def test_every_checkpoint_has_a_manifest_of_its_files(finished_run):
    from megatron_mmed.common.integrity import MANIFEST, checkpoint_files, verify

    base, _ = finished_run
    it = base / "iter_0000004"
    files = json.loads((it / MANIFEST).read_text())["files"]
    assert set(files) == set(checkpoint_files(it)) >= {".metadata", "common.pt", "metadata.json"}
    assert all(size == (it / name).stat().st_size for name, (size, _) in files.items())
    assert verify(it) == ([], True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from convert_helpers import save_llama, tiny_llama

    from conversion import hf_to_mcore

    root = tmp_path_factory.mktemp("conv")
    hf = save_llama(
        tiny_llama(vocab_size=257, hidden_size=64, intermediate_size=176, num_attention_heads=4), root / "hf"
    )
    hf_to_mcore(hf, root / "init", preset="tiny", skip_validation=True)
    return root / "init"


def test_damaged_init_from_and_ckpt_are_one_line_errors(repo_root, tok, converted, tmp_path):
    from conversion import mcore_to_hf
    from megatron_mmed.training.loop import train

    bad = tmp_path / "init"
    shutil.copytree(converted, bad)
    _flip_8_bytes(_distcp(bad))
    with pytest.raises(
        UserError, match=r"checkpoint.init_from .* is damaged: __0_\d.distcp checksum differs"
    ):
        train(_cfg(repo_root, tok, tmp_path / "run", f"checkpoint.init_from={bad}"))
    with pytest.raises(UserError, match=r"--ckpt .* is damaged: __0_\d.distcp checksum differs"):
        mcore_to_hf(bad, tmp_path / "hf", family="llama")
    assert not (tmp_path / "hf").exists()


class _RunsCode:
    """What an attacker pickles: unpickling it calls ``open(marker, "w")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_foreign_metadata_pickle_is_never_run(repo_root, tok, converted, tmp_path):
    """A checkpoint from elsewhere (no manifest) whose .metadata would run code is refused, unrun."""
    from conversion import mcore_to_hf
    from megatron_mmed.training.loop import train

    evil = tmp_path / "foreign"
    shutil.copytree(converted, evil)
    (evil / "manifest.json").unlink(missing_ok=True)  # a checkpoint from elsewhere
    marker = tmp_path / "code-ran"
    (evil / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(
        UserError, match=r"\.metadata: not a torch_dist metadata file.*refusing to load io\.open"
    ):
        mcore_to_hf(evil, tmp_path / "hf", family="llama")
    with pytest.raises(UserError, match="refusing to load io.open"):
        train(_cfg(repo_root, tok, tmp_path / "run", f"checkpoint.init_from={evil}"))
    assert not marker.exists()


def test_foreign_checkpoint_without_manifest_loads_with_a_warning(converted, tmp_path):
    from conversion import mcore_to_hf

    plain = tmp_path / "plain"
    shutil.copytree(converted, plain)
    (plain / "manifest.json").unlink()
    report = mcore_to_hf(plain, tmp_path / "hf", family="llama", dtype="fp32")
    assert report.validation.ok and any("not verified" in w for w in report.warnings)


def test_checksums_are_xxh3_of_the_blocks_checksums_whatever_the_read_path(tmp_path, monkeypatch):
    """Manifests written before hashing went through mmap must still verify: same bytes, same checksum."""
    import xxhash

    from megatron_mmed.common import integrity

    monkeypatch.setattr(integrity, "BLOCK", 1024**2)
    data = {"a.distcp": bytes(range(256)) * 9000 + b"tail", "empty": b"", "one": b"x"}  # ~2.2 blocks
    for name, raw in data.items():
        (tmp_path / name).write_bytes(raw)
    got = integrity.file_digests(tmp_path, sorted(data), threads=2)
    for name, raw in data.items():
        blocks = [raw[o : o + 1024**2] for o in range(0, max(len(raw), 1), 1024**2)]
        want = xxhash.xxh3_128(b"".join(xxhash.xxh3_128(b).digest() for b in blocks)).hexdigest()
        assert got[name] == [len(raw), want], name
