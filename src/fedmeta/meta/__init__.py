"""Gradient-based meta-learners over parameter dicts, one algorithm per module."""

from fedmeta.meta.anil import ANIL
from fedmeta.meta.base import MetaLearner, Params
from fedmeta.meta.maml import FOMAML, MAML
from fedmeta.meta.metasgd import MetaSGD
from fedmeta.meta.reptile import Reptile

ALGORITHMS: dict[str, type[MetaLearner]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "reptile": Reptile,
    "metasgd": MetaSGD,
    "anil": ANIL,
}

__all__ = ["ALGORITHMS", "ANIL", "FOMAML", "MAML", "MetaLearner", "MetaSGD", "Params", "Reptile"]
