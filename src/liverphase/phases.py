"""Phase vocabulary and the rules that name a DICOM series' phase from its description."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CT_PHASES: tuple[str, ...] = ("NC", "ART", "PV", "DL")
"""The four CT phases in acquisition order: non-contrast, arterial, portal venous, delayed."""

DCE_PHASES: tuple[str, ...] = ("PRE", "ART", "PV", "TP", "HBP")
"""The five DCE-MRI phases (gadoxetic acid) in acquisition order: pre-contrast, arterial, portal
venous, transitional (about 3 min) and hepatobiliary (about 20 min)."""

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


# DCE-MRI (Siemens VIBE, GE LAVA / LAVA-Flex, Philips THRIVE / eTHRIVE / mDIXON wording). Keys are
# in acquisition order (the DICOM reader fills unnamed series by that order); `MR_PHASE_PRIORITY`
# is the order they are tried in. Series that only number a temporal phase ("Ph1/Ax LAVA MPh")
# are left unnamed on purpose: Ph1 is the pre-contrast mask in some protocols and the arterial
# phase in others, so the reader names them by acquisition order between named neighbours.
MR_PHASE_RULES: dict[str, tuple[str, ...]] = {
    "PRE": (
        r"\bpre\b",
        r"\bpre(contrast|gad|gd)\b",
        r"\bnon[- ]?contrast",
        r"\bnative\b",
        r"\bunenhanced\b",
        r"\bplain\b",
        r"\bnc\b",
    ),
    "ART": (
        r"arterial",
        r"\bart\d?\b",
        r"\b(h|l|e)?ap\b",
        r"\b(15|18|20|25|30|35|40) ?(s|sec|secs)\b",
    ),
    "PV": (
        r"portal",
        r"venous",
        r"\bpvp?\b",
        r"\bven\b",
        r"\b(1 ?min|(50|55|60|65|70|75|80|90) ?(s|sec|secs))\b",
    ),
    "TP": (
        r"transition",
        r"\btp\b",
        r"equilibrium",
        r"\beq\b",
        r"\bdelay",
        r"\blate ?(phase|dyn|dynamic)\b",
        r"\b[2-5] ?(-| )?mins?\b",
        r"\b(120|150|180|240|300) ?(s|sec|secs)\b",
    ),
    "HBP": (
        r"hepatobiliary",
        r"hepatocyte",
        r"\bhbp?\b",
        r"\b(10|15|20|25|30) ?(-| )?mins?\b",
    ),
}
# HBP first: "20 min delay" is hepatobiliary, not transitional; PRE before ART/PV so "non-contrast"
# never reads as something else; ART before TP so "late arterial" stays arterial.
MR_PHASE_PRIORITY: tuple[str, ...] = ("HBP", "PRE", "ART", "PV", "TP")
# Derived or other-contrast series that may carry a phase word but are not the phase's T1W image:
# subtractions, MIPs / reformats, Dixon fat / in-phase / opposed-phase images, T2W and diffusion.
MR_EXCLUDE: tuple[str, ...] = (
    r"\bsub\b",
    r"subtract",
    r"\bmip\b",
    r"\bmpr\b",
    r"\b(ip|op)\b",
    r"\bin ?-?phase",
    r"\bopp(osed)? ?-?phase",
    r"\bout ?-?(of ?-?)?phase",
    r"\bfat\b(?! ?-?(sat|supp|suppress))",
    r"dixon.*\b(f|in|opp|op|ip)\b",
    r"\bt2\b",
    r"\b(dwi|adc|diff|diffusion)\b",
)


@dataclass(frozen=True)
class PhaseRules:
    """Case-insensitive regular expressions that map a series description to a phase name.

    `rules` keys are the phases in acquisition order; `priority` (default: that order) is the
    order phases are tried in, the first match winning; a description matching any `exclude`
    pattern names no phase.
    """

    rules: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(DEFAULT_PHASE_RULES))
    priority: Sequence[str] | None = None
    exclude: Sequence[str] = ()

    def match(self, description: str) -> str | None:
        """Return the phase named by `description`, or None when no rule matches.

        "non-contrast" must not read as "contrast ... venous", so phases are tried in the order given
        and NC (the most specific wording) first.
        """
        text = description.lower().replace("_", " ")
        if any(re.search(p, text) for p in self.exclude):
            return None
        for phase in self.priority or self.rules:
            if any(re.search(p, text) for p in self.rules[phase]):
                return phase
        return None

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases these rules name, in acquisition order."""
        return tuple(self.rules)

    @classmethod
    def for_modality(cls, modality: str) -> PhaseRules:
        """The default rules of a DICOM Modality: "CT" (NC, ART, PV, DL) or "MR" (DCE_PHASES)."""
        key = str(modality).strip().upper()
        if key == "CT":
            return cls()
        if key in ("MR", "MRI"):
            return cls(dict(MR_PHASE_RULES), MR_PHASE_PRIORITY, MR_EXCLUDE)
        raise ValueError(f"no default phase rules for modality {modality!r}; known: CT, MR")

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
