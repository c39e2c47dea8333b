"""Keys and values of one batched greedy generation on CPU, and the attention over them: each shared prompt prefix
kept once (not copied into every row), each row's own tokens in a preallocated buffer, no padding mask in the
prompt passes, the last layer of a prompt pass attended only where its output is read (each row's last position),
decode attention in length buckets. It plugs into transformers as an attention function
(``AttentionInterface``) while a batch runs.

Why: decode attention on a CPU is bound by the bytes of keys it reads. A static cache sized to the longest prompt
reads every row's copy of its language's ~220-token prefix and the padding up to the longest row at every step;
here a step reads each prefix once and each row's own tokens (rows sorted by length, read in a few buckets each as
wide as its longest row). Two attentions over disjoint key sets are joined exactly by their log-sum-exps, as flash
attention joins its blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch

from eval.prefix import length_runs

NAME = "mmed_prefix_kv"
_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # (output, log-sum-exp); CPU tensors only
# A decode attention call's fixed cost in row x key positions read (~30 us against ~25 ns a position, tiny CPU
# model): a further length bucket is worth it only when it skips more padding than this.
BUCKET_COST = 1200


def _attend(q, k, v, scale: float, causal: bool = False, mask=None):
    """(output, log-sum-exp of the scaled scores) of ``q`` (b, h, q, d) over ``k``/``v`` (b, h, k, d)."""
    return _FLASH(q, k, v, 0.0, causal, attn_mask=mask, scale=scale)


def _causal(query, key, value, scale: float):
    """(output, log-sum-exp) of causal attention of ``query`` over its own ``key``/``value`` (fewer key heads:
    each repeated for its group of query heads)."""
    group = query.shape[1] // key.shape[1]
    return _attend(query, key.repeat_interleave(group, 1), value.repeat_interleave(group, 1), scale, True)


def _beyond(lengths: torch.Tensor, width: int, dtype) -> torch.Tensor:
    """``(n, 1, 1, width)`` additive mask: 0 at the first ``lengths[i]`` key positions of row ``i``, -inf after."""
    mask = torch.zeros(len(lengths), 1, 1, width, dtype=dtype, device=lengths.device)
    cols = torch.arange(width, device=lengths.device)
    return mask.masked_fill_(cols >= lengths[:, None, None, None], float("-inf"))


def _join(out_a, lse_a, out_b, lse_b):
    """Attention over the union of two disjoint key sets, from each set's output and log-sum-exp: the weighted
    mean of the two outputs, ``b``'s weight ``exp(lse_b) / (exp(lse_a) + exp(lse_b)) = sigmoid(lse_b - lse_a)``."""
    return torch.lerp(out_a, out_b, torch.sigmoid(lse_b - lse_a)[..., None])


def _stack_queries(q, kv: int):
    """(n, heads, q, d) -> (1, kv heads, n * group * q, d): every row's queries of a key head as one sequence."""
    n, heads, length, dim = q.shape
    return q.reshape(n, kv, heads // kv * length, dim).transpose(0, 1).reshape(1, kv, -1, dim)


class _Plan(NamedTuple):
    """How decode steps read the buffer: length buckets (row ranges); each (row, key head)'s first buffer
    position (a flat index); and for the prefixes: the row whose queries fill each prefix slot, each row's slot,
    -inf for rows without a prefix (``None``: all have one), the mask of each prefix's padding."""

    buckets: list[tuple[int, int]]
    slots: torch.Tensor
    qidx: torch.Tensor | None = None
    back: torch.Tensor | None = None
    no_prefix: torch.Tensor | None = None
    pmask: torch.Tensor | None = None


class PrefixKV:
    """Keys and values of ``rows`` sequences (buffer rows), each = a shared prefix (or none) + its own tokens.

    Before each forward: ``prefixes(lengths)`` (once: every shared prefix in one right-padded pass, prefix
    id = its row); ``prompt(rows, pid, last)`` (buffer ``rows``' own tokens, right-padded, after prefix ``pid`` or
    none; ``last``: each row's last real position, the only one the last layer computes); ``step(own)`` (decode:
    buffer row ``r`` has ``own[r]`` own tokens stored and writes its new one there). Between steps,
    ``keep_rows(keep)`` drops the other rows. ``width``: the most own tokens a row will hold. Decode reads rows in
    length buckets, so give long rows low buffer indices. ``attention`` serves transformers' forward (through
    ``prefix_kv_attention``); ``keep`` and ``at_last`` serve a forward written out (``eval/llama_forward.py``).
    """

    def __init__(self, rows: int, width: int, last_layer: int | None = None, pool: dict | None = None):
        self.rows, self.width = rows, width
        # flat tensors the buffers are cut from, kept by the caller from one batch to the next: the same memory
        # is zeroed again instead of freed and faulted in afresh (~25 ms per GB on the CI machine)
        self.pool = pool if pool is not None else {}
        # the model's last layer: its prompt-pass outputs are read only at each row's last position (the logits
        # of the first new token); at every other position only its keys and values are needed
        self.last_layer = last_layer
        self.keys: dict[int, torch.Tensor] = {}  # per layer: (rows, kv heads, width, dim), made on first use
        self.values: dict[int, torch.Tensor] = {}
        self.prefix_keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per layer, all prefixes padded
        self.prefix_lens: list[int] = []
        self.rows_of: dict[int, list[int]] = {}  # prefix id -> its buffer rows
        self.calls = 0  # attention calls served (a model whose attention bypasses the interface makes none)
        self._plan: _Plan | None = None  # decode: built at the first step
        self._mask: torch.Tensor | None = None  # decode: (rows, 1, 1, width), -inf past each row's keys
        self._widths: list[int] = []  # decode: each bucket's keys read
        self._mode: tuple = ("none",)

    def prefixes(self, lengths: Sequence[int]) -> None:
        if self.prefix_lens:
            raise ValueError("the shared prefixes go through the model in one pass, once")
        self.prefix_lens = list(lengths)
        self._mode = ("prefix",)

    def prompt(self, rows: Sequence[int], pid: int | None, last: torch.Tensor | None = None) -> None:
        """The next forward is a prompt pass of buffer ``rows`` after prefix ``pid``; ``last``: each row's last
        real position in it, where alone the last layer's output is then computed (elsewhere zeros)."""
        if pid is not None:
            self.rows_of.setdefault(pid, []).extend(rows)
        self._mode = ("prompt", torch.tensor(list(rows)), pid, last)

    def step(self, own: torch.Tensor) -> None:
        if self._plan is None:
            self._plan = self._decode_plan(own)
        before = self._mode[1] if self._mode[0] == "step" else None
        if before is not None and torch.equal(own, before + 1):  # a token more in each row: a column more
            self._mask.view(len(own), -1).scatter_(1, own[:, None], 0.0)
            self._widths = [w + 1 for w in self._widths]
        else:
            self._mask = _beyond(own + 1, self.width, self._dtype())
            self._widths = [int(own[a:b].max()) + 1 for a, b in self._plan.buckets]
        slots = (self._plan.slots + own[:, None]).reshape(-1)  # (row, key head) -> its new key's place
        self._mode = ("step", own, slots)

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Decode goes on with buffer rows ``keep`` only (ascending), which become rows ``0..len(keep)-1``: rows
        that finished stop costing a step anything."""
        for layer in self.keys:
            self.keys[layer] = self.keys[layer].index_select(0, keep)
            self.values[layer] = self.values[layer].index_select(0, keep)
        new = {old: i for i, old in enumerate(keep.tolist())}
        self.rows_of = {pid: [new[r] for r in rows if r in new] for pid, rows in self.rows_of.items()}
        self.rows = len(keep)
        self._plan, self._mode = None, ("none",)  # the next step plans afresh

    def _dtype(self):
        return next(iter(self.keys.values())).dtype

    @property
    def mode(self) -> str:
        """What the next forward is: ``"prefix"``, ``"prompt"`` or ``"step"`` (``"none"`` before any)."""
        return self._mode[0]

    @property
    def at_last_only(self) -> bool:
        """A prompt pass given each row's last position: the last layer is needed there only."""
        return self._mode[0] == "prompt" and self._mode[3] is not None

    def attention(self, layer: int, query, key, value, scale: float):
        """Layer ``layer``'s attention output (batch, queries, heads, dim) in the current mode; keeps
        ``key``/``value``. In a prompt pass given ``last``, the last layer's output is computed at each row's
        ``last`` position only (zeros elsewhere; ``at_last`` returns just those)."""
        kind = self._mode[0]
        self.calls += 1
        kv = key.shape[1]
        group = query.shape[1] // kv
        if kind == "prefix":
            self.keep(layer, key, value)
            # nothing reads the last layer's output in the prefix pass: its keys and values are what it is for
            if layer == self.last_layer:
                return query.new_zeros(query.transpose(1, 2).shape)
            return _causal(query, key, value, scale)[0].transpose(1, 2)
        if kind == "prompt":
            _, rows, pid, last = self._mode
            if last is not None and layer == self.last_layer:
                n, heads, length, dim = query.shape
                at = torch.arange(n, device=query.device)
                full = query.new_zeros(n, length, heads, dim)
                full[at, last] = self.at_last(layer, query[at, :, last], key, value, scale)
                return full
            self.keep(layer, key, value)
            # right padding needs no mask under causal attention: a real token never sees the pads after it
            out, lse = _causal(query, key, value, scale)
            if pid is not None:
                out = _join(out, lse, *self._over_prefix(layer, pid, query, scale))
            return out.transpose(1, 2)
        if kind == "step":
            _, own, slots = self._mode
            keys, values = self.keys[layer], self.values[layer]
            b, heads, _, dim = query.shape
            keys.view(-1, dim).index_copy_(0, slots, key.reshape(-1, dim))
            values.view(-1, dim).index_copy_(0, slots, value.reshape(-1, dim))
            q = query.reshape(b, kv, group, dim)  # a row's query heads as queries of their key head
            parts = [
                _attend(q[a:z], keys[a:z, :, :w], values[a:z, :, :w], scale, mask=self._mask[a:z, ..., :w])
                for (a, z), w in zip(self._plan.buckets, self._widths, strict=True)
            ]
            out = torch.cat([o for o, _ in parts]) if len(parts) > 1 else parts[0][0]
            if self._plan.qidx is not None:  # some rows have a prefix
                lse = torch.cat([s for _, s in parts]) if len(parts) > 1 else parts[0][1]
                out = _join(out, lse, *self._over_prefixes(layer, q, scale))
            return out.reshape(b, heads, 1, dim).transpose(1, 2)
        raise RuntimeError("PrefixKV: no mode set before the forward")

    def keep(self, layer: int, key, value) -> None:
        """Keep a prefix or prompt pass's keys and values (a prompt pass's into its rows of the buffer)."""
        if self._mode[0] == "prefix":
            self.prefix_keys[layer] = (key, value)  # right-padded: each prefix's pads are masked where read
            return
        rows = self._mode[1]
        if layer not in self.keys:  # zeros: decode reads (masked) past a row's end, never garbage or NaN
            shape = (self.rows, key.shape[1], self.width, key.shape[3])
            self.keys[layer], self.values[layer] = (self._zeros((layer, t), shape, key) for t in ("k", "v"))
        self.keys[layer][rows, :, : key.shape[2]] = key
        self.values[layer][rows, :, : key.shape[2]] = value

    def _zeros(self, name, shape, like):
        """A zeroed contiguous ``shape`` tensor cut from the pool's flat tensor ``name`` (grown if too small)."""
        size = math.prod(shape)
        flat = self.pool.get(name)
        if flat is None or flat.numel() < size or flat.dtype != like.dtype or flat.device != like.device:
            flat = self.pool[name] = like.new_empty(size)
        return flat[:size].view(shape).zero_()

    def at_last(self, layer: int, query, key, value, scale: float):
        """A prompt pass's attention output (rows, heads, dim) at each row's position ``last`` only, from the
        queries there (rows, heads, dim) and the pass's keys and values (kept): the row's query heads as queries
        of their key head over its own keys up to there, joined with its prefix."""
        _, rows, pid, last = self._mode
        self.keep(layer, key, value)
        n, heads, dim = query.shape
        kv, length = key.shape[1], key.shape[2]
        out, lse = _attend(query.reshape(n, kv, heads // kv, dim), key, value, scale,
                           mask=_beyond(last + 1, length, query.dtype))  # fmt: skip
        out, lse = out.reshape(n, heads, 1, dim), lse.reshape(n, heads, 1)
        if pid is not None:
            out = _join(out, lse, *self._over_prefix(layer, pid, query[:, :, None], scale))
        return out.reshape(n, heads, dim)

    def _over_prefix(self, layer: int, pid: int, query, scale: float):
        """(output, log-sum-exp) of ``query`` (rows, heads, positions, dim), every row after prefix ``pid``, over
        that prefix's keys, read once: every row's queries of a key head as one sequence."""
        pk, pv = (t[pid : pid + 1, :, : self.prefix_lens[pid]] for t in self.prefix_keys[layer])
        n, heads, length, dim = query.shape
        kv = pk.shape[1]
        o, s = _attend(_stack_queries(query, kv), pk, pv, scale)
        o = o.reshape(kv, n, -1, dim).transpose(0, 1).reshape(n, heads, length, dim)
        return o, s.reshape(kv, n, -1).transpose(0, 1).reshape(n, heads, length)

    def _over_prefixes(self, layer: int, q, scale: float):
        """(output, log-sum-exp) of each decode row's queries (rows, kv heads, group, dim) over its prefix, all
        prefixes in one call: each read once, its rows' queries stacked as one sequence (a prefix's padding up to
        the longest masked)."""
        plan = self._plan
        pk, pv = self.prefix_keys[layer]
        n, kv, group, dim = pk.shape[0], q.shape[1], q.shape[2], q.shape[3]
        stacked = q[plan.qidx].view(n, -1, kv, group, dim).transpose(1, 2).reshape(n, kv, -1, dim)
        out, lse = _attend(stacked, pk, pv, scale, mask=plan.pmask)
        out = out.view(n, kv, -1, group, dim).transpose(1, 2).reshape(-1, kv, group, dim)[plan.back]
        lse = lse.view(n, kv, -1, group).transpose(1, 2).reshape(-1, kv, group)[plan.back]
        return out, lse if plan.no_prefix is None else lse + plan.no_prefix

    def _decode_plan(self, own: torch.Tensor) -> _Plan:
        """How decode reads the buffer, from the rows' own lengths at the first step."""
        lens = own.tolist()
        order = sorted(range(len(lens)), key=lambda r: -lens[r])
        if order != list(range(len(lens))):
            buckets = [(0, len(lens))]  # rows not sorted by length: one bucket as wide as the longest
        else:
            buckets = length_runs([n + 1 for n in lens], len(lens), BUCKET_COST)
        device, dtype = own.device, self._dtype()
        heads = next(iter(self.keys.values())).shape[1]
        row_ids = torch.arange(len(lens), device=device)[:, None]
        slots = (row_ids * heads + torch.arange(heads, device=device)) * self.width
        if not any(self.rows_of.values()):
            return _Plan(buckets, slots)
        width = max(len(r) for r in self.rows_of.values())
        qidx, back, has = [], [0] * self.rows, [False] * self.rows
        for pid in range(len(self.prefix_lens)):
            rows = self.rows_of.get(pid) or [0]
            qidx += [rows[i] if i < len(rows) else rows[0] for i in range(width)]
            for i, r in enumerate(self.rows_of.get(pid, [])):
                back[r], has[r] = pid * width + i, True
        plens = torch.tensor(self.prefix_lens, device=device)
        longest = int(plens.max())
        pmask = _beyond(plens, longest, dtype) if bool((plens < longest).any()) else None
        no_prefix = None
        if not all(has):
            no_prefix = torch.tensor([0.0 if h else float("-inf") for h in has], dtype=dtype, device=device)
            no_prefix = no_prefix[:, None, None]
        qidx_t, back_t = torch.tensor(qidx, device=device), torch.tensor(back, device=device)
        return _Plan(buckets, slots, qidx_t, back_t, no_prefix, pmask)


def _attention_function(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``AttentionInterface`` entry: routes to the ``PrefixKV`` given as the forward's ``prefix_kv`` argument."""
    kv = kwargs.get("prefix_kv")
    unsupported = [k for k in ("sliding_window", "softcap", "s_aux") if kwargs.get(k) is not None]
    if kv is None or unsupported or attention_mask is not None or dropout:
        raise NotImplementedError(f"{NAME}: unsupported attention call ({unsupported or 'no prefix_kv'})")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return kv.attention(module.layer_idx, query, key, value, scale), None


@contextmanager
def prefix_kv_attention(model):
    """``model``'s attention goes through ``PrefixKV`` inside the block (give ``prefix_kv=`` to each forward)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, _attention_function)
    old = model.config._attn_implementation
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = old
