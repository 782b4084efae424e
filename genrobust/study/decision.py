"""The study's one decision point: the answer, written from the primary endpoint and the masking checks.

Wording is tied to numbers, never to a count of attacks:

- **strong**: the pooled effect (generative minus discriminative robust accuracy under the ensemble) is
  positive with p < 0.05 and an interval above 0, *every* replicate pair's interval is above 0, the masking
  checks ran and none flagged, and the design could detect a difference of 0.03 (pooled detectable <= 0.03);
- **weak**: positive and significant pooled, but one of those conditions fails (which one is said);
- **reversed**: the pooled effect is negative with p < 0.05;
- **not distinguishable**: p >= 0.05 (with the smallest difference this n could detect);
- **masking flagged**: a masking check flagged on a model of the run: no claim, whatever the effect.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from genrobust.study.effects import DETECT_TARGET, Effect
from genrobust.uncertainty import ALPHA

QUESTION = ("Are generative classifiers more robust to adversarial attacks than discriminative ones? "
            "(Li, Bradshaw & Sharma, ICML 2019, compared GFZ with DFZ.)")
Strength = Literal["strong", "weak", "reversed", "not distinguishable", "masking flagged", "no comparison"]


class Answer(BaseModel):
    question: str = QUESTION
    strength: Strength
    answer: str
    conditions: list[str] = Field(default_factory=list, description="What the strength rests on, each with its numbers.")
    differences: str = ""
    limits: str = ""


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:+.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "p –"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def effect_text(e: Effect) -> str:
    ci = "" if e.low is None else f" [{e.low:+.3f}, {e.high:+.3f}]"
    return f"{_num(e.difference)}{ci} ({_p(e.p)}, {e.n_pairs} pair{'s' * (e.n_pairs != 1)} × {e.n_images} images)"


def pair_text(e: Effect) -> str:
    out = []
    for p in e.pairs:
        ci = "" if p.low is None else f" [{p.low:+.3f}, {p.high:+.3f}]"
        bc = f", b {p.b} / c {p.c}" if p.b is not None else ""
        out.append(f"{p.generative} − {p.discriminative}: {_num(p.difference)}{ci}{bc}, {_p(p.p)}")
    return "; ".join(out)


def answer(primary: Effect | None, masking: dict[str, list[str]] | None, secondary: list[Effect] = (),
           differences: str = "", limits: str = "") -> Answer:
    """``masking``: model -> the letters of its flagged checks (None: the checks did not run)."""
    if primary is None or primary.difference is None:
        return Answer(strength="no comparison", answer="No comparison: the primary endpoint needs a generative and a "
                      "discriminative model on the same images.", differences=differences, limits=limits)
    g, d = primary.pairs[0].generative, primary.pairs[0].discriminative
    who = f"{g} − {d}" + (f" and {primary.n_pairs - 1} more replicate pair{'s' * (primary.n_pairs > 2)}"
                          if primary.n_pairs > 1 else "")
    what = f"{primary.title}, {who}: {effect_text(primary)}"
    conditions = [f"pooled effect {effect_text(primary)}",
                  f"per replicate pair: {pair_text(primary)}"]
    flagged = {m: v for m, v in (masking or {}).items() if v}
    if masking is None:
        conditions.append("masking checks: not run")
    else:
        conditions.append("masking checks: " + ("; ".join(f"{m} flagged ({', '.join(v)})" for m, v in flagged.items())
                                                if flagged else f"none flagged on {', '.join(masking)}"))
    detect = primary.detectable
    conditions.append(f"smallest detectable pooled difference {detect:.3f} (target ≤ {DETECT_TARGET})"
                      if detect is not None else "smallest detectable difference: not computable at this n")
    rates = [r.value for pe in primary.pairs for r in (pe.generative_rate, pe.discriminative_rate)]
    floored = all(v == 0 for v in rates if v is not None)
    if floored:
        conditions.append("the ensemble leaves no image robust on any model at this ε: it floors them all and can "
                          "tell none apart; the next run should declare a smaller ε")
    sig = primary.p is not None and primary.p < ALPHA
    if flagged:
        strength: Strength = "masking flagged"
        head = (f"No claim: a gradient-masking check flagged ({', '.join(flagged)}), so robust accuracy may come from "
                f"attacks failing rather than from the model. Measured: {what}")
    elif sig and primary.difference > 0 and (primary.low or 0) > 0:
        missing = []
        if not primary.holds_every_pair():
            missing.append("not every replicate pair's interval excludes 0")
        if masking is None:
            missing.append("the masking checks did not run")
        if detect is None or detect > DETECT_TARGET:
            missing.append(f"the design cannot detect {DETECT_TARGET}")
        strength = "weak" if missing else "strong"
        head = (f"Yes: the generative models keep a higher robust accuracy than the discriminative ones under the "
                f"strongest ensemble — {what}"
                + (f". Weak because {'; '.join(missing)}" if missing else ""))
    elif sig and primary.difference < 0:
        strength = "reversed"
        head = f"No: the generative models keep a lower robust accuracy than the discriminative ones — {what}"
    else:
        strength = "not distinguishable"
        dd = f"; this n could detect about {detect:.3f}" if detect is not None else ""
        head = (f"Not distinguishable: the ensemble floors every model at this ε — {what}" if floored else
                f"Not distinguishable at this n: {what}{dd}")
    text = head + "."
    holds = [e for e in secondary if e.p_adjusted is not None and e.p_adjusted < ALPHA]
    if secondary:
        text += " Secondary endpoints (Holm over the family): " + "; ".join(
            f"{e.title} {_num(e.difference)} ({'p (Holm) ' + _p(e.p_adjusted)[2:] if e.p_adjusted is not None else 'not testable'})"
            for e in secondary) + f" — {len(holds)} of {len(secondary)} significant."
    return Answer(strength=strength, answer=text, conditions=conditions, differences=differences, limits=limits)
