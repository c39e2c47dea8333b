"""The private megatron-core internals the repo reaches into still exist in the pinned release."""

from __future__ import annotations

import re

from megatron_mmed.common.mcore_compat import (
    CHECKED_AGAINST,
    INTERNALS,
    Internal,
    check,
    check_all,
    installed_version,
)


def test_installed_megatron_core_is_the_release_the_internals_were_checked_against(repo_root):
    pinned = re.search(r"^megatron-core==(\S+)$", (repo_root / "requirements.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == CHECKED_AGAINST, (
        "requirements.txt pins another megatron-core: re-check megatron_mmed/common/mcore_compat.py's list, "
        "then update CHECKED_AGAINST"
    )
    assert installed_version() == CHECKED_AGAINST


def test_every_listed_internal_still_resolves_as_used():
    problems = check_all()
    assert not problems, "megatron-core internals changed:\n" + "\n".join(problems)
    assert len({e.target for e in INTERNALS}) == len(INTERNALS)


def test_a_changed_internal_is_reported_naming_its_user():
    """The checker can fail: a renamed attribute, a field no longer set, a dropped parameter."""
    builder = "megatron.core.datasets.indexed_dataset:IndexedDatasetBuilder"
    gone = check(Internal(f"{builder}.add_items_fast", "attribute", "x.py", "why"))
    assert gone and gone.startswith(f"{builder}.add_items_fast: gone") and "used by x.py" in gone
    field = check(Internal(builder, "instance_attributes", "y.py", "why", ("data_file", "offsets_")))
    assert field and "self.offsets_" in field and "data_file" not in field
    rope = "megatron.core.models.common.embeddings.rotary_pos_embedding:RotaryEmbedding.forward"
    param = check(Internal(rope, "parameters", "z.py", "why", ("max_seq_len", "positions")))
    assert param and "['positions']" in param
    assert check(Internal("megatron.core.no_such_module:x", "attribute", "w.py", "why")).endswith(
        "used by w.py"
    )
