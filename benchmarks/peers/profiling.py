"""``--profile``: run one call under cProfile and print where the seconds went, grouped by phase.

Each function's own time goes to the first phase rule that matches it (``(phase, path fragment, name
pattern)``); a function no rule names (numpy, builtins, helpers) passes its own time on to its callers, split
as cProfile recorded it per caller, so ``np.argsort`` called from the band step counts as band step. A time
that reaches no named function is "other". Rules match names, so a refactor that renames a phase's function
shows up under "other" with its name in the top list rather than silently moving time. Modules imported
lazily inside the call (torch, megatron-core, matplotlib) are their own phase, "imports", after the script's
rules: cProfile inflates them, so read that row as "start-up exists", not as its real cost.
"""

from __future__ import annotations

import cProfile
import pstats
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

Rule = tuple[str, str, str]  # (phase, fragment of the file path, regex on the function name)

#: appended to every script's rules: code run by the import system (module bodies, unmarshalling, dlopen)
IMPORTS: Rule = ("imports (lazy, inside the call)", "<frozen importlib", r"")


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

    memo: dict[Any, dict[str, float]] = {}

    def shares(func, stack: frozenset = frozenset()) -> dict[str, float]:
        """How ``func``'s own time splits over phases: its rule, else its callers' shares weighted by the
        time it spent per caller. A caller already on the stack (recursion: imports run module bodies that
        import) gives no answer ({}) and the others are renormalised; only answers are memoised, so a wide
        call graph costs about one visit per edge and a cycle cannot pin a function to "other"."""
        if func in memo:
            return memo[func]
        ph = rule_of(func)
        if ph is not None:
            memo[func] = {ph: 1.0}
            return memo[func]
        callers = raw.get(func, (0, 0, 0, 0, {}))[4]
        weights = {c: v[2] for c, v in callers.items()}
        if sum(weights.values()) <= 0:  # recorded own time per caller is zero: split by cumulative time
            weights = {c: v[3] for c, v in callers.items()}
        if not callers or sum(weights.values()) <= 0:
            memo[func] = {"other": 1.0}
            return memo[func]
        out: dict[str, float] = defaultdict(float)
        total = 0.0
        for caller, w in weights.items():
            if caller in stack or w <= 0 or len(stack) >= 300:
                continue
            got = shares(caller, stack | {func})
            if got:
                total += w
                for p, f in got.items():
                    out[p] += f * w
        if total <= 0:
            return {}  # reached only through the stack: the caller that entered the cycle decides
        memo[func] = {p: f / total for p, f in out.items()}
        return memo[func]

    phases: dict[str, float] = defaultdict(float)
    top: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for func, (_, _, tt, _, _) in raw.items():
        if tt > 0:
            for ph, f in (shares(func) or {"other": 1.0}).items():
                phases[ph] += tt * f
                top[ph][_label(func)] += tt * f
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
    table = phase_table(stats, [*rules, IMPORTS])
    total = sum(v["seconds"] for v in table.values()) or 1.0
    print_fn(
        f"\nprofile: {title} ({total:.2f} s of own time under cProfile, which slows Python code ~1.5-2x)"
    )
    print_fn(f"{'phase':<34} {'seconds':>8} {'share':>6}  top functions (own time, incl. what they called)")
    for ph, v in table.items():
        tops = "; ".join(f"{name} {s:.2f}" for name, s in v["top"][:3])
        print_fn(f"{ph:<34} {v['seconds']:>8.2f} {v['seconds'] / total:>6.1%}  {tops}")
    return table
