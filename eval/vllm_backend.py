"""The vLLM backend (GPU): the same prompt strings as the transformers backend, raw text or log-probabilities back;
vllm is imported only when this backend is chosen (``pip install vllm`` on a GPU machine)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.backends import check_model_dir
from megatron_mmed.common.errors import UserError


class VLLMBackend:
    """vLLM engine with the same prompts; needs ``pip install vllm`` on a GPU machine (optional extra)."""

    def __init__(
        self, model: str | Path, dtype: str = "auto", trust_remote_code: bool = False, **engine: Any
    ):
        try:
            from vllm import LLM
        except ImportError:
            raise UserError(
                "backend 'vllm' needs the vllm package (pip install vllm on a GPU machine)"
            ) from None
        path = check_model_dir(model)
        self.llm = LLM(model=str(path), dtype=dtype, trust_remote_code=trust_remote_code, **engine)
        self.tok = self.llm.get_tokenizer()
        self.eos_text = tuple(t for t in {self.tok.eos_token} if t)
        self.truncated = 0

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=False)
        return [o.outputs[0].text for o in self.llm.generate(list(prompts), params, use_tqdm=False)]

    def loglik(self, context: str, continuations: Sequence[str]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ctx = self.tok(context)["input_ids"]
        conts = [self.tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ctx + c) for c in conts], params, use_tqdm=False
        )
        scores = []
        for o, c in zip(outs, conts, strict=True):
            lp = o.prompt_logprobs[len(ctx) :]
            scores.append(sum(step[t].logprob for step, t in zip(lp, c, strict=True)))
        return scores
