"""The paper's math on logits: release policies (Stingy Teacher and baselines) and its theory.

Pure torch: no I/O and no other package of this project.
"""

from defense.base import Disclosure, LogitPolicy, SparseLogits, TopNPolicy
from defense.ranking import count_from_ratio, descending_order
from defense.registry import POLICIES, make_policy, policy_from_fields, policy_parameters
from defense.softmax import tempered_log_softmax, tempered_softmax

__all__ = [
    "POLICIES",
    "Disclosure",
    "LogitPolicy",
    "SparseLogits",
    "TopNPolicy",
    "count_from_ratio",
    "descending_order",
    "make_policy",
    "policy_from_fields",
    "policy_parameters",
    "tempered_log_softmax",
    "tempered_softmax",
]
