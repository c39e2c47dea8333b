"""MMedBench evaluation: load the benchmark, prompt a causal LM, parse its answers, score as the paper does.

Public entry points: ``run_mmedbench(EvalConfig)`` (live run) and ``score_predictions(...)`` (re-score a
file). They are imported lazily so ``import eval.parse`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvalConfig", "run_mmedbench", "score_predictions"]


def __getattr__(name: str) -> Any:
    if name in ("EvalConfig", "run_mmedbench"):
        from eval import run

        return getattr(run, name)
    if name == "score_predictions":
        from eval.scoring import score_predictions

        return score_predictions
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
