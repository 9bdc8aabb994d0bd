"""Phase vocabulary and the rules that name a DICOM series' phase from its description."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CT_PHASES: tuple[str, ...] = ("NC", "ART", "PV", "DL")
"""The four CT phases in acquisition order: non-contrast, arterial, portal venous, delayed."""

DEFAULT_REFERENCE_PHASE = "PV"

# Word-boundary patterns, tried per phase; first matching phase wins in the order given.
DEFAULT_PHASE_RULES: dict[str, tuple[str, ...]] = {
    "NC": (
        r"plain",
        r"native",
        r"\bpre\b",
        r"pre[-_ ]?contrast",
        r"non[-_ ]?contrast",
        r"\bnc\b",
        r"unenhanced",
    ),
    "ART": (r"arterial", r"\bart\b", r"\bap\b", r"\bhap\b", r"\blap\b"),
    "PV": (r"portal", r"venous", r"\bpvp?\b"),
    "DL": (r"delay", r"delayed", r"equilibrium", r"\bdl\b", r"\beq\b", r"late"),
}


@dataclass(frozen=True)
class PhaseRules:
    """Case-insensitive regular expressions that map a series description to a phase name."""

    rules: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(DEFAULT_PHASE_RULES))

    def match(self, description: str) -> str | None:
        """Return the phase named by `description`, or None when no rule matches.

        "non-contrast" must not read as "contrast ... venous", so phases are tried in the order given
        and NC (the most specific wording) first.
        """
        text = description.lower().replace("_", " ")
        for phase, patterns in self.rules.items():
            if any(re.search(p, text) for p in patterns):
                return phase
        return None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Sequence[str] | str]) -> PhaseRules:
        """Build rules from a user mapping (phase → pattern or list of patterns)."""
        rules = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in mapping.items()}
        for phase, patterns in rules.items():
            for p in patterns:
                re.compile(p)  # fail early on a bad pattern
            if not patterns:
                raise ValueError(f"phase {phase!r} has no pattern")
        return cls(rules)


def neighbour_phases(phases: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The two neighbours of each phase on a ring (NC↔ART↔PV↔DL↔NC for the four CT phases)."""
    n = len(phases)
    return {p: (phases[(i - 1) % n], phases[(i + 1) % n]) for i, p in enumerate(phases)}
