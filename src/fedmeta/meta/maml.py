"""MAML and first-order MAML (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning
for Fast Adaptation of Deep Networks").

MAML differentiates the query loss through the inner gradient steps (second order);
FOMAML drops the second-derivative terms and uses the query gradient at the adapted
parameters. Both are the shared `MetaLearner`; only `first_order` differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmeta.meta.base import MetaLearner


@dataclass
class MAML(MetaLearner):
    first_order: bool = False


@dataclass
class FOMAML(MetaLearner):
    first_order: bool = True
