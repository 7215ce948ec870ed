"""How the singular set's dihedral-angle threshold is chosen: one typed value, resolved once.

A rule is one of three frozen dataclasses (the :data:`ThresholdRule` union):

- :class:`FixedThreshold`: a given angle in radians (the paper: 0.75 rad for MNIST latents).
- :class:`QuantileThreshold`: the ``q`` quantile of the observed adjacent-pair angles.
- :class:`GapThreshold`: the geometric midpoint of the largest log-gap of the sorted angles,
  over splits that keep at least ``min_regular`` of the pairs regular; when the gap's ratio is
  below ``min_ratio`` and a ``fallback`` quantile is given, that quantile is used instead.

:data:`DEFAULT_RULE` is the gap rule with a median fallback. A rule travels as a plain dict
(:func:`rule_to_dict` / :func:`rule_from_dict`, for JSON job configs and potential files) and
is written by people as a short text (:func:`parse_rule`: ``"auto"``, ``"gap"``, ``"gap:0.6"``,
``"quantile:0.8"``, ``"fixed:0.75"``). A new kind of rule is a new dataclass here plus its
branch in :func:`solver.potential.singular.find_singular_set`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

RuleName = Literal["fixed", "quantile", "gap"]

# Default quantile rule: the largest 10 % of observed adjacent-pair angles are singular.
DEFAULT_QUANTILE = 0.9
# The gap rule splits only where at least this share of observed pairs stays regular: singular
# facets separate modes, so they are a minority, and log-gaps among the tiniest angles (which
# are large ratios of small numbers) must not win.
DEFAULT_MIN_REGULAR = 0.5
# The default rule uses the gap rule when its gap is at least this ratio; below it the angles
# have no clear gap (measured: ratio 7.4 on the 25-Gaussian grid, 1.02 on MNIST AE latents in
# d = 32, 1.13 on digits latents in d = 8) and the fallback quantile is used.
MIN_GAP_RATIO = 2.0
# The quantile of that fallback. Measured on digits latents (d = 8): the share of the extended
# map's blend weight landing on targets of another digit was 17 % with the gap rule (1 pair of
# ~30,000 singular), 16 % with the 0.9 quantile, 4.6 % with the median.
FALLBACK_QUANTILE = 0.5


@dataclass(frozen=True, kw_only=True)
class FixedThreshold:
    """A fixed dihedral angle threshold.

    Attributes:
        radians: the threshold, in ``(0, pi)`` radians.

    """

    name: ClassVar[RuleName] = "fixed"
    radians: float

    def __post_init__(self) -> None:
        if not 0.0 < float(self.radians) < math.pi:
            raise ValueError(f"fixed threshold must be in (0, pi) radians, got {self.radians!r}")


@dataclass(frozen=True, kw_only=True)
class QuantileThreshold:
    """The ``q`` quantile of the observed angles: about ``1 - q`` of the pairs are singular.

    Attributes:
        q: the quantile, in ``(0, 1)`` (numpy's linear interpolation).

    """

    name: ClassVar[RuleName] = "quantile"
    q: float = DEFAULT_QUANTILE

    def __post_init__(self) -> None:
        if not 0.0 < float(self.q) < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.q!r}")


@dataclass(frozen=True, kw_only=True)
class GapThreshold:
    """The largest gap of the log-angles, optionally falling back to a quantile.

    Attributes:
        min_regular: share of pairs, in ``[0, 1)``, that must stay at or below the threshold.
        min_ratio: with a ``fallback``, the gap ratio below which the gap counts as unclear.
        fallback: the quantile rule used when the gap ratio is below ``min_ratio``; ``None``
            keeps the gap whatever its ratio.

    """

    name: ClassVar[RuleName] = "gap"
    min_regular: float = DEFAULT_MIN_REGULAR
    min_ratio: float = MIN_GAP_RATIO
    fallback: QuantileThreshold | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.min_regular) < 1.0:
            raise ValueError(f"min_regular must be in [0, 1), got {self.min_regular!r}")
        if not (math.isfinite(self.min_ratio) and self.min_ratio >= 1.0):
            raise ValueError(f"min_ratio must be a finite ratio >= 1, got {self.min_ratio!r}")


ThresholdRule = FixedThreshold | QuantileThreshold | GapThreshold
DEFAULT_RULE: ThresholdRule = GapThreshold(fallback=QuantileThreshold(q=FALLBACK_QUANTILE))
_KINDS: dict[str, type[FixedThreshold] | type[QuantileThreshold] | type[GapThreshold]] = {
    "fixed": FixedThreshold,
    "quantile": QuantileThreshold,
    "gap": GapThreshold,
}


def rule_to_dict(rule: ThresholdRule) -> dict[str, Any]:
    """Plain JSON-ready form of a rule: its fields plus ``"rule"`` (its name)."""
    return {"rule": rule.name, **asdict(rule)}


def rule_from_dict(data: dict[str, Any]) -> ThresholdRule:
    """Rebuild a rule from :func:`rule_to_dict` output.

    Raises:
        ValueError: unknown rule name, unknown or bad fields.

    """
    fields = dict(data)
    name = fields.pop("rule", None)
    kind = _KINDS.get(str(name))
    if kind is None:
        raise ValueError(f"rule must be one of {sorted(_KINDS)}, got {name!r}")
    if kind is GapThreshold and fields.get("fallback") is not None:
        fields["fallback"] = QuantileThreshold(**fields["fallback"])
    try:
        return kind(**fields)
    except TypeError as exc:
        raise ValueError(f"bad fields for rule {name!r}: {sorted(fields)}") from exc


def parse_rule(text: str) -> ThresholdRule:
    """Read a rule written as ``auto``, ``gap[:min_regular]``, ``quantile[:q]``, ``fixed:radians``.

    ``auto`` is :data:`DEFAULT_RULE`; ``gap`` alone has no fallback.

    Raises:
        ValueError: naming the text and the accepted forms.

    """
    name, _, value = text.strip().lower().partition(":")
    forms = "auto, gap[:min_regular], quantile[:q] or fixed:radians"
    try:
        number = float(value) if value else None
    except ValueError:
        raise ValueError(f"singular rule {text!r}: {value!r} is not a number ({forms})") from None
    if name == "auto" and number is None:
        return DEFAULT_RULE
    if name == "fixed" and number is not None:
        return FixedThreshold(radians=number)
    if name == "quantile":
        return QuantileThreshold() if number is None else QuantileThreshold(q=number)
    if name == "gap":
        return GapThreshold() if number is None else GapThreshold(min_regular=number)
    raise ValueError(f"singular rule must be {forms}; got {text!r}")
