"""Generation and log-likelihood backends: Hugging Face transformers (batched, left-padded; CPU or GPU) and
vLLM (``eval/vllm_backend.py``, imported only when chosen). Both take the same prompt strings and return raw text
or log-probabilities.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from eval.prefix import prefill_groups
from megatron_mmed.common.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
# PrefixKV decoding drops the rows that have their EOS once they are this share of the decode batch (a drop copies
# the other rows' keys; answers of very different lengths otherwise all cost as much as the longest)
DROP_FINISHED = 0.25


class Backend(Protocol):
    """What the evaluation needs from a model."""

    eos_text: tuple[str, ...]

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]: ...

    def loglik(self, context: str, continuations: Sequence[str]) -> list[float]: ...


def check_model_dir(model: str | Path) -> Path:
    """A clear ``UserError`` for a missing folder, no config.json or no tokenizer files."""
    path = Path(model)
    if not path.is_dir():
        raise UserError(f"model folder not found: {path}")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json (expected a Hugging Face model folder)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save one next to the model"
        )
    return path


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, "auto")


class HFBackend:
    """transformers causal LM: batched greedy generation (length-sorted batches, prompt passes that compute a
    shared token prefix once, one decode batch: on ``PrefixKV`` where the model passes its probe on CPU, else in a
    preallocated transformers KV cache) and batched loglik."""

    def __init__(
        self,
        model: str | Path,
        batch_size: int = 16,
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        max_prompt_tokens: int = 0,
        prefill_group: int = 8,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars: the evaluation shows its own progress
        path = check_model_dir(model)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = batch_size
        try:
            self.tok = AutoTokenizer.from_pretrained(
                path, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the tokenizer from {path}: {e}") from None
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            if self.tok.eos_token is None:
                raise UserError(f"the tokenizer in {path} has neither a pad nor an eos token")
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code, local_files_only=True
        ).to(self.device)
        self.model.eval()
        self.eos_ids = self._eos_ids()
        self.eos_text = tuple(t for t in {self.tok.eos_token, self.tok.pad_token} if t)
        limit = getattr(self.model.config, "max_position_embeddings", 0) or 0
        self.max_prompt_tokens = max_prompt_tokens or limit
        self.truncated = 0
        self.prefill_group = max(1, min(prefill_group, batch_size))
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        self._decoder, self._head = self.model.get_decoder(), self.model.get_output_embeddings()
        self._split = None not in (self._decoder, self._head) and self._decoder is not self.model
        self._last_layer = self.model.config.get_text_config().num_hidden_layers - 1
        self._own = None
        self._kv_pool: dict = {}  # PrefixKV's buffers, reused by the next batch
        self.rows_dropped = 0  # finished rows taken out of PrefixKV decode batches
        # a cache layer that keeps every position is what the batched paths copy and extend; other kinds (sliding
        # windows, chunked attention) go through transformers' own left-padded `generate`
        self._plain_cache = all(type(layer).__name__ == "DynamicLayer" for layer in self._new_cache().layers)
        # CPU: PrefixKV decoding where the probe finds the model's own logits, on the model's forward written out
        # (eval/llama_forward.py) for the Llama layout, else on transformers' forward; else the transformers cache
        self.own_forward = self.prefix_kv = False
        if self._plain_cache and self.device.type == "cpu":
            from eval.llama_forward import LlamaForward

            self._own = LlamaForward.of(self.model)
            self.own_forward = self.prefix_kv = self._own is not None and self._prefix_kv_works()
            if not self.prefix_kv:
                self._own = None
                self.prefix_kv = self._prefix_kv_works()

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tok.eos_token_id is not None and self.tok.eos_token_id not in ids:
            ids.append(self.tok.eos_token_id)
        return ids

    def _encode(self, prompts: Sequence[str], room: int) -> list[list[int]]:
        """Token ids per prompt, left-truncated (counted) so that prompt + ``room`` fits the context."""
        out = []
        limit = self.max_prompt_tokens - room if self.max_prompt_tokens else 0
        for ids in self.tok(list(prompts), add_special_tokens=True)["input_ids"]:
            if limit > 0 and len(ids) > limit:
                ids = ids[-limit:]
                self.truncated += 1
            out.append(ids)
        return out

    def _decode(self, new_ids: Sequence[int]) -> str:
        """Text up to and including the first EOS (kept so the parser sees real end-of-text tokens)."""
        return self.tok.decode(self._through_eos(list(new_ids)), skip_special_tokens=False)

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` (returned in input order), in batches of similar length."""
        encoded = self._encode(prompts, max_new_tokens)
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        outputs: list[str] = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, ids in zip(chunk, self._greedy([encoded[i] for i in chunk], max_new_tokens), strict=True):
                outputs[i] = self._decode(ids)
        return outputs

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()

    def _padded(self, seqs: Sequence[Sequence[int]], left: bool = False):
        """``seqs`` as one tensor of ids, each padded with the pad id to the longest (after it, or before)."""
        import torch

        pad, width = self.tok.pad_token_id, max(len(s) for s in seqs)
        rows = [
            [pad] * (width - len(s)) + list(s) if left else list(s) + [pad] * (width - len(s)) for s in seqs
        ]
        return torch.tensor(rows, device=self.device)

    def _logits_at(self, last, **kw):
        """The forward ``kw``'s logits at each row's position ``last`` (only those go through the LM head), or
        ``None`` without ``last`` (a pass run for the keys and values it leaves in a cache)."""
        import torch

        if self._split:
            hidden = self._decoder(**kw).last_hidden_state
            if last is None:
                return None
            return self._head(hidden[torch.arange(hidden.shape[0], device=self.device), last])
        logits = self.model(**kw).logits
        return None if last is None else logits[torch.arange(logits.shape[0], device=self.device), last]

    def _prompt_pass(self, ids, cache, last=None):
        """``ids`` (rows right-padded) through the model after the keys and values already in ``cache`` (which
        takes theirs); the logits at each row's position ``last``, if given (only those go through the head)."""
        return self._logits_at(last, input_ids=ids, **{self._cache_kw: cache}, use_cache=True)

    def _prefill(self, seqs: Sequence[Sequence[int]]):
        """(logits after each sequence's last token, per-layer keys and values, the groups) for a batch of prompts.

        Prompts go through in groups (``prefix.prefill_groups``): rows sharing a long token prefix (the paper
        prompt's wrapper and instruction) together, longest first. A group's shared prefix is computed once at
        batch size 1 and broadcast into the group's cache; the rest of each row follows right-padded to the
        group's longest: right padding needs no padding mask (a token never attends to the pads after it), and
        only each row's last real position goes through the LM head. Keys and values come back per layer as
        (rows, heads, positions, dim) tensors in group order, right-padded to the batch's longest prompt.
        """
        import torch

        width = max(len(s) for s in seqs)
        groups = prefill_groups(seqs, self.prefill_group)
        prefixes: dict[tuple[int, ...], Any] = {}
        logits, layers = [], None
        start = 0
        for grp in groups:
            n = len(grp.rows)
            cache = self._new_cache()
            if grp.shared:
                head = tuple(seqs[grp.rows[0]][: grp.shared])
                if head not in prefixes:
                    prefixes[head] = self._new_cache()
                    self._prompt_pass(torch.tensor([head], device=self.device), prefixes[head])
                for i, layer in enumerate(prefixes[head].layers):
                    cache.update(layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1), i)
            rest = [list(seqs[r][grp.shared :]) for r in grp.rows]
            glens = torch.tensor([len(t) for t in rest], device=self.device)
            gw = int(glens.max())
            logits.append(self._prompt_pass(self._padded(rest), cache, glens - 1))
            if layers is None:
                layers = [
                    (
                        layer.keys.new_zeros(len(seqs), *layer.keys.shape[1:2], width, layer.keys.shape[-1]),
                        layer.values.new_zeros(
                            len(seqs), *layer.values.shape[1:2], width, layer.values.shape[-1]
                        ),
                    )
                    for layer in cache.layers
                ]
            for (k, v), layer in zip(layers, cache.layers, strict=True):
                k[start : start + n, :, : grp.shared + gw] = layer.keys
                v[start : start + n, :, : grp.shared + gw] = layer.values
            start += n
        return torch.cat(logits), layers, groups

    def _static(self, layers, length: int):
        """A preallocated (static) cache of ``length`` positions holding ``layers``' keys and values, or ``None``
        where this transformers cannot make one. Decoding then writes in place: a growing cache copies all of
        itself at every step, which costs as much per row as a one-at-a-time loop and caps what batching gains.
        """
        try:
            from transformers import StaticCache

            static = StaticCache(config=self.model.config, max_cache_len=length)
            if not all(type(layer).__name__ == "StaticLayer" for layer in static.layers):
                return None  # sliding-window or other layer kinds: keep the dynamic cache
            for i, (k, v) in enumerate(layers):
                static.update(k, v, i)
            return static
        except (ImportError, TypeError, AttributeError):
            return None

    def _dynamic(self, layers):
        cache = self._new_cache()
        for i, (k, v) in enumerate(layers):
            cache.update(k, v, i)
        return cache

    def _kv_forward(self, ids, positions, kv, last):
        """Logits at each row's position ``last`` of ``ids`` run with ``PrefixKV`` attention (no transformers cache):
        through the model's forward written out where it is the Llama layout, else transformers'."""
        if self._own is not None:
            return self._own(ids, positions, kv, last)
        return self._logits_at(last, input_ids=ids, position_ids=positions, use_cache=False, prefix_kv=kv)

    def _kv_prefill(self, seqs: Sequence[Sequence[int]], kv, groups, slot: Sequence[int]):
        """Logits after each sequence's last prompt token (in ``seqs`` order); sequence ``r`` fills buffer row
        ``slot[r]``. The shared prefixes go through the model once, in one right-padded pass (``PrefixKV`` keeps
        their keys once), each group's own tokens right-padded after its prefix; only each row's last position
        reaches the head."""
        import torch

        logits = [None] * len(seqs)
        pids: dict[tuple[int, ...], int] = {}
        for grp in groups:
            if grp.shared:
                pids.setdefault(tuple(seqs[grp.rows[0]][: grp.shared]), len(pids))
        if pids:
            kv.prefixes([len(h) for h in pids])
            ids = self._padded(list(pids))
            positions = torch.arange(ids.shape[1], device=self.device)[None].expand(len(pids), -1)
            self._kv_forward(ids, positions, kv, torch.zeros(len(pids), dtype=torch.long, device=self.device))
        for grp in groups:
            pid = pids[tuple(seqs[grp.rows[0]][: grp.shared])] if grp.shared else None
            rest = [list(seqs[r][grp.shared :]) for r in grp.rows]
            glens = torch.tensor([len(t) for t in rest], device=self.device)
            ids = self._padded(rest)
            positions = grp.shared + torch.arange(ids.shape[1], device=self.device).expand(len(rest), -1)
            kv.prompt([slot[r] for r in grp.rows], pid, glens - 1)
            for r, row in zip(grp.rows, self._kv_forward(ids, positions, kv, glens - 1), strict=True):
                logits[r] = row
        return torch.stack(logits)

    def _greedy_prefix_kv(self, seqs: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """``_greedy`` on ``PrefixKV``: a prefix's keys once per language, each row's own tokens in a buffer row
        (longest first, so that decode reads them in length buckets); rows that have their EOS leave the decode
        batch once they are ``DROP_FINISHED`` of it."""
        import torch

        from eval.prefix_kv import PrefixKV, prefix_kv_attention

        groups = prefill_groups(seqs, self.prefill_group)
        own_len = {r: len(seqs[r]) - g.shared for g in groups for r in g.rows}
        order = sorted(own_len, key=lambda r: -own_len[r])  # buffer row -> index into seqs
        slot = [0] * len(seqs)
        for row, r in enumerate(order):
            slot[r] = row
        own = torch.tensor([own_len[r] for r in order], device=self.device)
        pos = torch.tensor([len(seqs[r]) for r in order], device=self.device)
        kv = PrefixKV(len(seqs), int(own.max()) + max_new_tokens, self._last_layer, self._kv_pool)
        out = torch.full((len(seqs), max_new_tokens), -1, dtype=torch.long, device=self.device)
        eos = torch.tensor(self.eos_ids or [-1], device=self.device)
        done = torch.zeros(len(seqs), dtype=torch.bool, device=self.device)
        alive = torch.arange(len(seqs), device=self.device)  # decode row -> its row of ``out``
        steps = 0
        with torch.inference_mode(), prefix_kv_attention(self.model):
            logits = self._kv_prefill(seqs, kv, groups, slot)[torch.tensor(order, device=self.device)]
            for step in range(max_new_tokens):
                nxt = logits.argmax(-1)
                if len(alive) == len(seqs):
                    out[:, step] = nxt
                else:
                    out[alive, step] = nxt
                steps = step + 1
                done |= torch.isin(nxt, eos)
                finished = int(done.sum())
                if steps == max_new_tokens or finished == len(done):
                    break
                if finished and finished >= DROP_FINISHED * len(done):  # rows with their EOS leave the batch
                    keep = (~done).nonzero().squeeze(1)
                    kv.keep_rows(keep)
                    alive, own, pos, nxt, done = alive[keep], own[keep], pos[keep], nxt[keep], done[keep]
                    self.rows_dropped += finished
                kv.step(own)
                logits = self._kv_forward(nxt[:, None], pos[:, None], kv, 0)
                own, pos = own + 1, pos + 1
        result: list[list[int]] = [[] for _ in seqs]
        for row, toks in enumerate(out[:, :steps].tolist()):
            result[order[row]] = self._through_eos(toks)
        return result

    def _prefix_kv_works(self) -> bool:
        """Whether this model's attention goes through ``PrefixKV`` and gives its own logits (checked on a tiny
        two-row batch sharing a prefix, against plain forwards); other models keep the transformers-cache path."""
        import torch

        from eval.prefix import PrefillGroup

        vocab = self.model.get_input_embeddings().num_embeddings
        seqs = [[(7 * i + 3) % vocab for i in range(n)] for n in (9, 7)]
        seqs[1][5:] = [(11 * i + 5) % vocab for i in range(2)]
        try:
            from eval.prefix_kv import PrefixKV, prefix_kv_attention

            kv = PrefixKV(2, 6, self._last_layer)
            with torch.inference_mode(), prefix_kv_attention(self.model):
                got = self._kv_prefill(seqs, kv, [PrefillGroup((0, 1), 5)], [0, 1])
                kv.step(torch.tensor([4, 2], device=self.device))
                nxt = torch.tensor([[1], [2]], device=self.device)
                pos = torch.tensor([[9], [7]], device=self.device)
                got = torch.cat([got, self._kv_forward(nxt, pos, kv, 0)])
            if kv.calls == 0:
                return False
            with torch.inference_mode():
                want = [self.model(input_ids=torch.tensor([s + [t]], device=self.device)).logits[0] for s, t in
                        zip(seqs, (1, 2), strict=True)]  # fmt: skip
            want = torch.stack([want[0][8], want[1][6], want[0][9], want[1][7]])
            return bool(torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-4))
        except (NotImplementedError, RuntimeError, TypeError, AttributeError, KeyError, ValueError):
            return False

    def _greedy(self, seqs: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy new token ids per sequence (up to and including an EOS): the prompt passes, then one token per
        step for the whole batch in a preallocated cache (finished rows leave a growing cache's batch)."""
        import torch

        if self.prefix_kv:
            return self._greedy_prefix_kv(seqs, max_new_tokens)
        if not self._plain_cache:
            return self._greedy_hf(seqs, max_new_tokens)

        out: list[list[int]] = [[] for _ in seqs]
        eos = set(self.eos_ids)
        with torch.inference_mode():
            logits, layers, groups = self._prefill(seqs)
            order = [r for g in groups for r in g.rows]  # cache row -> index into seqs
            pos = torch.tensor([len(seqs[r]) for r in order], device=self.device)
            width = layers[0][0].shape[-2]
            static = self._static(layers, width + max_new_tokens) if max_new_tokens > 1 else None
            cache = static if static is not None else self._dynamic(layers)
            del layers
            size = width + (max_new_tokens if static is not None else 0)
            mask = torch.arange(size, device=self.device)[None, :] < pos[:, None]
            if static is not None and self.model.config._attn_implementation == "sdpa":
                mask = mask[:, None, None, :]  # as the model's own mask: no per-step rebuild (static width)
            alive = list(order)  # cache row -> its sequence; -1 once finished (a static cache keeps the row)
            for step in range(max_new_tokens):
                nxt = logits.argmax(-1)
                for r, t in enumerate(nxt.tolist()):
                    if alive[r] >= 0:
                        out[alive[r]].append(t)
                        if t in eos:
                            alive[r] = -1
                keep = [r for r, row in enumerate(alive) if row >= 0]
                if not keep or step + 1 == max_new_tokens:
                    break
                if static is None:
                    if len(keep) < len(alive):
                        k = torch.tensor(keep, device=self.device)
                        cache.batch_select_indices(k)
                        mask, pos, nxt = mask[k], pos[k], nxt[k]
                        alive = [alive[r] for r in keep]
                    mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
                else:
                    mask[..., width + step] = True
                logits = self.model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=pos[:, None],
                    **{self._cache_kw: cache},
                    use_cache=True,
                ).logits[:, -1]
                pos = pos + 1
        return out

    def _greedy_hf(self, seqs: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy new token ids (up to and including an EOS) from transformers' ``generate`` on the left-padded
        batch: for models whose cache is not one plain layer per position (sliding-window attention)."""
        import torch

        ids = self._padded(seqs, left=True)
        width = ids.shape[1]
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        with torch.inference_mode():
            new = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                      max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids,
                                      pad_token_id=self.tok.pad_token_id)[:, width:].tolist()  # fmt: skip
        return [self._through_eos(row) for row in new]

    def _through_eos(self, toks: list[int]) -> list[int]:
        """``toks`` up to and including the first EOS id (all of them if none)."""
        eos = set(self.eos_ids)
        return toks[: next((i + 1 for i, t in enumerate(toks) if t in eos), len(toks))]

    def loglik(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Sum of log-probabilities of each continuation's tokens after ``context`` (one batched forward)."""
        import torch

        ctx = self._encode([context], room=8)[0]
        conts = [self.tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
        seqs = [ctx + c for c in conts]
        ids = self._padded(seqs)
        width = ids.shape[1]
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
        with torch.inference_mode():
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        scores = []
        for row, c in enumerate(conts):
            pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(c), device=self.device)
            tgt = torch.tensor(c, device=self.device)
            scores.append(float(logp[row, pos, tgt].sum()))
        return scores


def make_backend(kind: str, model: str | Path, **kw: Any) -> Backend:
    """``"hf"`` or ``"vllm"`` backend for ``model``."""
    if kind == "hf":
        return HFBackend(model, **kw)
    if kind == "vllm":
        from eval.vllm_backend import VLLMBackend

        return VLLMBackend(
            model, dtype=kw.get("dtype", "auto"), trust_remote_code=kw.get("trust_remote_code", False)
        )
    raise UserError(f"unknown backend {kind!r} (hf or vllm)")
