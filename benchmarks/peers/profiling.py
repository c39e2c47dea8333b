"""``--profile``: run one call under cProfile and print where the seconds went, grouped by phase.

Each function's own time goes to the first phase rule that matches it (``(phase, path fragment, name
pattern)``); a function no rule names (numpy, builtins, helpers) passes its own time on to its callers, split
as cProfile recorded it per caller, so ``np.argsort`` called from the band step counts as band step. A time
that reaches no named function is "other". Rules match names, so a refactor that renames a phase's function
shows up under "other" with its name in the top list rather than silently moving time.
"""

from __future__ import annotations

import cProfile
import pstats
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

Rule = tuple[str, str, str]  # (phase, fragment of the file path, regex on the function name)


def _label(func: tuple[str, int, str]) -> str:
    path, line, name = func
    short = "/".join(path.split("/")[-2:]) if path not in ("~", "") else ""
    return f"{short}:{line}({name})" if short else name


def phase_table(stats: pstats.Stats, rules: Sequence[Rule]) -> dict[str, dict[str, Any]]:
    """``phase -> {"seconds": s, "top": [(label, s), ...]}`` from own times distributed up to named callers."""
    raw = stats.stats  # func -> (cc, nc, tt, ct, callers{caller: (cc, nc, tt, ct)})
    compiled = [(ph, frag, re.compile(pat)) for ph, frag, pat in rules]

    def rule_of(func) -> str | None:
        path, _, name = func
        for ph, frag, pat in compiled:
            if frag in path and pat.search(name):
                return ph
        return None

    phases: dict[str, float] = defaultdict(float)
    top: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def assign(func, seconds: float, origin, depth: int = 0, seen: frozenset = frozenset()) -> None:
        ph = rule_of(func)
        if ph is None and depth < 40 and func not in seen:
            callers = raw.get(func, (0, 0, 0, 0, {}))[4]
            weights = {c: v[2] for c, v in callers.items()}
            if sum(weights.values()) <= 0:  # recorded own time per caller is zero: split by cumulative time
                weights = {c: v[3] for c, v in callers.items()}
            total = sum(weights.values())
            if total > 0:
                for caller, w in weights.items():
                    assign(caller, seconds * w / total, origin, depth + 1, seen | {func})
                return
        ph = ph or "other"
        phases[ph] += seconds
        top[ph][_label(origin)] += seconds

    for func, (_, _, tt, _, _) in raw.items():
        if tt > 0:
            assign(func, tt, func)
    return {
        ph: {"seconds": s, "top": sorted(top[ph].items(), key=lambda kv: -kv[1])[:4]}
        for ph, s in sorted(phases.items(), key=lambda kv: -kv[1])
    }


def profile_call(fn: Callable[[], Any], rules: Sequence[Rule], title: str, print_fn=print) -> dict[str, Any]:
    """Run ``fn`` under cProfile; print and return the phase table."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    stats = pstats.Stats(prof)
    table = phase_table(stats, rules)
    total = sum(v["seconds"] for v in table.values()) or 1.0
    print_fn(
        f"\nprofile: {title} ({total:.2f} s of own time under cProfile, which slows Python code ~1.5-2x)"
    )
    print_fn(f"{'phase':<34} {'seconds':>8} {'share':>6}  top functions (own time, incl. what they called)")
    for ph, v in table.items():
        tops = "; ".join(f"{name} {s:.2f}" for name, s in v["top"][:3])
        print_fn(f"{ph:<34} {v['seconds']:>8.2f} {v['seconds'] / total:>6.1%}  {tops}")
    return table
