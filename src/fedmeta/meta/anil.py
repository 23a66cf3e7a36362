"""ANIL, "Almost No Inner Loop" (Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning
or Feature Reuse? Towards Understanding the Effectiveness of MAML").

The inner loop adapts only the network head (`head.*`); the body is shared across tasks
and changes only in the outer update, which still differentiates through the head's
inner steps (second order unless `first_order`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmeta.meta.base import MetaLearner
from fedmeta.models import HEAD


@dataclass
class ANIL(MetaLearner):
    def adapts(self, name: str) -> bool:
        return name.startswith(HEAD)
