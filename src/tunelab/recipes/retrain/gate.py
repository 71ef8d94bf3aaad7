"""The promotion gate: champion and challenger answer the same gate set, and the challenger is promoted only if it
is better on the new cases and no worse on the old ones.

The gate set has two parts. Old cases: the champion's own held-out data (its run's validation split), which says
whether old skills were kept. New cases: corrections the challenger was not trained on (or a gate file), which say
whether it learnt what users asked for. Both models answer greedily; an answer scores 1 when it equals the
reference (surrounding whitespace aside). Each part is a paired comparison of the same examples (McNemar's test,
`tunelab.eval.stats.mcnemar`, with its Wald interval of the difference challenger - champion):

- new cases must improve: difference > `min_gain` and McNemar's p < `alpha` (two-sided, so a significant
  difference in the right direction);
- old cases must not regress (non-inferiority): the interval's lower bound > -`old_margin`. With the default
  margin of 0.02 the challenger may lose at most 2 points of exact match on the old cases at 95% confidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.core.types import Message
from tunelab.eval.stats import PairedTest, mcnemar


@dataclass(frozen=True)
class GateRule:
    """When a challenger is promoted (the numbers are shares of exact match, 0.02 = 2 points)."""

    alpha: float = 0.05
    """McNemar's p-value below which the new-case gain counts as significant."""
    min_gain: float = 0.0
    """Least difference challenger - champion on the new cases (on top of significance)."""
    old_margin: float = 0.02
    """Non-inferiority margin on the old cases: the lower 95% bound of the difference must stay above -margin."""
    confidence: float = 0.95


@dataclass(frozen=True)
class GateCase:
    prompt: list[Message]
    reference: str
    part: str
    """"old" (the champion's held-out data) or "new" (held-out corrections, a gate file)."""


@dataclass
class PartResult:
    n: int
    champion: float
    challenger: float
    test: dict[str, Any]
    passed: bool
    rule: str


@dataclass
class GateResult:
    promoted: bool
    reason: str
    parts: dict[str, PartResult]
    rule: GateRule
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "reason": self.reason, "rule": asdict(self.rule),
                "parts": {k: asdict(v) for k, v in self.parts.items()}}  # fmt: skip


def exact(answer: str, reference: str) -> int:
    return int(answer.strip() == reference.strip())


def judge(cases: list[GateCase], champion: list[str], challenger: list[str], rule: GateRule) -> GateResult:
    """The gate's decision on answers of both models to `cases` (in order)."""
    parts: dict[str, PartResult] = {}
    for part in ("new", "old"):
        idx = [i for i, c in enumerate(cases) if c.part == part]
        a = [exact(champion[i], cases[i].reference) for i in idx]
        b = [exact(challenger[i], cases[i].reference) for i in idx]
        parts[part] = _part(part, a, b, rule) if idx else PartResult(0, 0.0, 0.0, {}, False, "no cases")
    new, old = parts["new"], parts["old"]
    if new.n == 0 or old.n == 0:
        reason = f"the gate set has no {'new' if new.n == 0 else 'old'} cases"
    elif not new.passed:
        reason = f"not promoted: new cases did not improve enough ({new.rule})"
    elif not old.passed:
        reason = f"not promoted: old cases regressed ({old.rule})"
    else:
        reason = f"promoted: new cases improved ({new.rule}) and old cases held ({old.rule})"
    examples = [
        {"part": c.part, "prompt": c.prompt[-1].content if c.prompt else "", "reference": c.reference,
         "champion": champion[i], "challenger": challenger[i]}
        for i, c in enumerate(cases)
    ]  # fmt: skip
    return GateResult(new.passed and old.passed, reason, parts, rule, examples)


def _part(part: str, a: list[int], b: list[int], rule: GateRule) -> PartResult:
    test = mcnemar(a, b, confidence=rule.confidence, alpha=rule.alpha)
    d = test.delta
    if part == "new":
        passed = d.estimate > rule.min_gain and test.p_value < rule.alpha
        text = (f"difference {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}], {test.test} p={test.p_value:.3g}; "
                f"needs > {rule.min_gain:+.3f} with p < {rule.alpha:g}")  # fmt: skip
    else:
        passed = d.low > -rule.old_margin
        text = (f"difference {d.estimate:+.3f}, lower {rule.confidence:.0%} bound {d.low:+.3f}; needs > "
                f"{-rule.old_margin:+.3f}")  # fmt: skip
    return PartResult(len(a), sum(a) / len(a), sum(b) / len(b), _test_json(test), passed, text)


def _test_json(test: PairedTest) -> dict[str, Any]:
    d = test.delta
    return {"test": test.test, "difference": d.estimate, "low": d.low, "high": d.high, "confidence": d.confidence,
            "p_value": test.p_value, "discordant": list(test.discordant or ())}  # fmt: skip


def gate_markdown(result: GateResult, champion: str, challenger: str) -> str:
    """gate.md: the decision, the rule and each part's numbers."""
    lines = [
        "# Promotion gate", "", f"Champion: `{champion}`  ", f"Challenger: `{challenger}`", "",
        f"**{'PROMOTED' if result.promoted else 'REFUSED'}**: {result.reason}", "",
        "| cases | n | champion exact | challenger exact | difference [95% CI] | p | passes |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, p in result.parts.items():
        if p.n:
            t = p.test
            interval = f"{t['difference']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]"
            passes = "yes" if p.passed else "no"
            scores = f"{p.champion:.3f} | {p.challenger:.3f}"
            lines.append(f"| {name} | {p.n} | {scores} | {interval} | {t['p_value']:.3g} | {passes} |")
    r = result.rule
    lines += ["", f"Rule: new cases improve by more than {r.min_gain:g} with McNemar p < {r.alpha:g}; the old "
              f"cases' lower {r.confidence:.0%} bound of the difference stays above -{r.old_margin:g} "
              "(non-inferiority)."]  # fmt: skip
    return "\n".join(lines) + "\n"
