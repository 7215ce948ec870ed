"""How the singular set's dihedral-angle threshold is chosen: one typed value, resolved once.

A rule is one of four frozen dataclasses (the :data:`ThresholdRule` union):

- :class:`FixedThreshold`: a given angle in radians (the paper: 0.75 rad for MNIST latents).
- :class:`QuantileThreshold`: the ``q`` quantile of the observed adjacent-pair angles.
- :class:`GapThreshold`: the geometric midpoint of the largest log-gap of the sorted angles,
  over splits that keep at least ``min_regular`` of the pairs regular; when the gap's ratio is
  below ``min_ratio`` and a ``fallback`` is given, the fallback is used instead.
- :class:`ClusterShare`: flag as many pairs as join two different spectral clusters of the
  targets (:mod:`solver.potential.diffusion`): the data says how many facets are singular, the
  scores say which.

:data:`DEFAULT_RULE` is the gap rule falling back to the cluster share. A rule travels as a
plain dict (:func:`rule_to_dict` / :func:`rule_from_dict`, for JSON job configs and potential
files) and is written by people as a short text (:func:`parse_rule`: ``"auto"``, ``"gap"``,
``"gap:0.6"``, ``"quantile:0.8"``, ``"fixed:0.75"``, ``"clusters"``). A new kind of rule is a
new dataclass here plus its branch in :func:`solver.potential.singular.find_singular_set`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

RuleName = Literal["fixed", "quantile", "gap", "clusters"]

# T~ (solver.potential.extended_map) blends a neighbour only when its pair's score is at most
# this share of the singular threshold. Chosen with the labels of the benchmark datasets
# (docs/singular.md, "the blend margin"): of 0.35, 0.4, 0.5, 0.7 and 1 (docs/benchmarks.md,
# singular set quality), the largest that keeps digits' T~ samples blending across labels
# under 2 % with the consensus cluster count (1.5 %, against 2.1 % at 0.4 and 9.0 % at 1),
# for 21 % less novelty (the mean distance from T~(z) to T(z)). 1.0 blends across every
# regular facet.
DEFAULT_BLEND_MARGIN = 0.35

# Default quantile rule: the largest 10 % of observed adjacent-pair angles are singular.
DEFAULT_QUANTILE = 0.9
# The gap rule splits only where at least this share of observed pairs stays regular: singular
# facets separate modes, so they are a minority, and log-gaps among the tiniest angles (which
# are large ratios of small numbers) must not win.
DEFAULT_MIN_REGULAR = 0.5
# The default rule uses the gap rule when its gap is at least this ratio; below it the angles
# have no clear gap (measured in the standard frame: ratio 7.4 on the 25-Gaussian grid, 1.02 on
# MNIST AE latents in d = 32, 1.13 on digits latents in d = 8; in the valley frame, the default:
# 57.6 on the grid, 1.07 on digits) and the fallback quantile is used.
MIN_GAP_RATIO = 2.0
# The quantile of the median rule, the fallback before the cluster share (kept for
# ``quantile:0.5``). Measured on digits latents (d = 8): the share of the extended map's blend
# weight landing on targets of another digit was 17 % with the gap rule (1 pair of ~30,000
# singular), 16 % with the 0.9 quantile, 4.6 % with the median.
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
class ClusterShare:
    """Flag the share of pairs that join two different spectral clusters of the targets.

    The number of clusters is read from the walk's time scales (:func:`solver.potential.
    diffusion.count_modes`); with s the share of observed pairs whose ends lie in different
    clusters in 3/4 of the k-means starts, the threshold is the ``1 - s`` quantile
    of the pair scores, so the highest scores are flagged in that number. With one cluster
    there is nothing to count, and the median is used.
    """

    name: ClassVar[RuleName] = "clusters"


@dataclass(frozen=True, kw_only=True)
class GapThreshold:
    """The largest gap of the log-angles, optionally falling back to another rule.

    Attributes:
        min_regular: share of pairs, in ``[0, 1)``, that must stay at or below the threshold.
        min_ratio: with a ``fallback``, the gap ratio below which the gap counts as unclear.
        fallback: the rule used when the gap ratio is below ``min_ratio`` (a quantile or the
            cluster share); ``None`` keeps the gap whatever its ratio.

    """

    name: ClassVar[RuleName] = "gap"
    min_regular: float = DEFAULT_MIN_REGULAR
    min_ratio: float = MIN_GAP_RATIO
    fallback: QuantileThreshold | ClusterShare | None = None

    def __post_init__(self) -> None:
        if self.fallback is not None and not isinstance(
            self.fallback, QuantileThreshold | ClusterShare
        ):
            raise ValueError(f"fallback must be a quantile or cluster rule, got {self.fallback!r}")
        if not 0.0 <= float(self.min_regular) < 1.0:
            raise ValueError(f"min_regular must be in [0, 1), got {self.min_regular!r}")
        if not (math.isfinite(self.min_ratio) and self.min_ratio >= 1.0):
            raise ValueError(f"min_ratio must be a finite ratio >= 1, got {self.min_ratio!r}")


ThresholdRule = FixedThreshold | QuantileThreshold | GapThreshold | ClusterShare
DEFAULT_RULE: ThresholdRule = GapThreshold(fallback=ClusterShare())
_KINDS: dict[str, type[ThresholdRule]] = {
    "fixed": FixedThreshold,
    "quantile": QuantileThreshold,
    "gap": GapThreshold,
    "clusters": ClusterShare,
}


def rule_to_dict(rule: ThresholdRule) -> dict[str, Any]:
    """Plain JSON-ready form of a rule: its fields plus ``"rule"`` (its name), also nested.

    A gap rule's fallback is written the same way, so the two fallbacks stay distinct.
    """
    data = {"rule": rule.name, **asdict(rule)}
    if isinstance(rule, GapThreshold) and rule.fallback is not None:
        data["fallback"] = rule_to_dict(rule.fallback)
    return data


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
    try:
        if kind is GapThreshold and fields.get("fallback") is not None:
            fields["fallback"] = rule_from_dict(_legacy_fallback(fields["fallback"]))
        return kind(**fields)
    except TypeError as exc:
        raise ValueError(f"bad fields for rule {name!r}: {sorted(fields)}") from exc


def _legacy_fallback(data: Any) -> dict[str, Any]:
    """A gap rule's saved fallback; files written before the cluster share saved ``{"q": q}``."""
    if not isinstance(data, dict):
        raise ValueError(f"a gap rule's fallback must be a rule, got {data!r}")
    return data if "rule" in data else {"rule": "quantile", **data}


def parse_rule(text: str) -> ThresholdRule:
    """Read a rule written as ``auto``, ``gap[:min_regular]``, ``quantile[:q]``, ``fixed:r``, ...

    The forms are ``auto``, ``gap[:min_regular]``, ``quantile[:q]``, ``fixed:radians`` and
    ``clusters``. ``auto`` is :data:`DEFAULT_RULE`; ``gap`` alone has no fallback.

    Raises:
        ValueError: naming the text and the accepted forms.

    """
    name, _, value = text.strip().lower().partition(":")
    forms = "auto, gap[:min_regular], quantile[:q], fixed:radians or clusters"
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
    if name == "clusters" and number is None:
        return ClusterShare()
    raise ValueError(f"singular rule must be {forms}; got {text!r}")
