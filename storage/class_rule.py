"""When an image counts as showing a class: the rule behind class filters, browsing and class counts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the settings read this rule's default at every start of the CLI
    from sqlalchemy import ColumnElement

RULES = ("top1", "top5")


@dataclass(frozen=True)
class ClassRule:
    """An image matches a class when it is its top-1 prediction, or (rule "top5") when the class is
    among its top-5 predictions with probability >= min_probability. The default min_probability is
    also search.class_min_probability's (indexer/settings.py reads it from here)."""

    rule: str = "top5"
    min_probability: float = 0.2

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"class rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0.0 <= self.min_probability <= 1.0:
            raise ValueError(f"class min probability must be from 0 to 1, got {self.min_probability}")

    @classmethod
    def of(cls, rule: ClassRule | float) -> ClassRule:
        """A rule as given, or the "top5" rule with a bare minimum probability."""
        return rule if isinstance(rule, ClassRule) else cls("top5", float(rule))

    def prediction_matches(self) -> ColumnElement[bool]:
        """SQL condition on a predictions row, whatever its class."""
        from sqlalchemy import or_

        from storage.schema import PredictionRow

        if self.rule == "top1":
            return PredictionRow.rank == 0
        return or_(PredictionRow.rank == 0, PredictionRow.probability >= self.min_probability)

    def matches(self, class_ids: Iterable[int] | None) -> ColumnElement[bool]:
        """SQL condition: a predictions row that makes its image match one of `class_ids` (None: any class)."""
        from storage.schema import PredictionRow

        if class_ids is None:
            return self.prediction_matches()
        return PredictionRow.class_id.in_(sorted(class_ids)) & self.prediction_matches()
