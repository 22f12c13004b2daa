"""What a training run minimises, given the model's logits on a batch (mdistiller-style: one class per
set-up, the engine stays the same). An objective returns its named, weighted loss terms (``{"kd": ...,
"ce": ...}``); the loss is their sum, and the engine logs each term's epoch mean in the run's history.

Objectives and teacher signals are ``nn.Module``\\ s, so ``objective.to(device)`` moves any teacher network
they hold. Teachers are frozen, in eval mode and run under ``inference_mode``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from defense import LogitPolicy, make_policy
from training.data import Batch
from training.losses import KD_ALPHA, KD_TEMPERATURE, kd_loss_terms, nasty_loss_terms

LossTerms = dict[str, Tensor]


class TeacherSignal(nn.Module, ABC):
    """The logits a student distils from, for the batch's (normalised, augmented) inputs."""

    @abstractmethod
    def forward(self, inputs: Tensor, batch: Batch) -> Tensor: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...


class LiveTeacher(TeacherSignal):
    """A teacher network in-process, its logits passed through a release policy."""

    def __init__(self, model: nn.Module, policy: LogitPolicy | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.policy = policy or make_policy("normal")

    def forward(self, inputs: Tensor, batch: Batch) -> Tensor:
        with torch.inference_mode():
            released = self.policy(self.model(inputs).float())
        return released.clone()  # a normal tensor again, usable by autograd

    def describe(self) -> dict[str, Any]:
        return {"teacher": "live", "policy": self.policy.config()}


class CachedTeacher(TeacherSignal):
    """Teacher logits computed (or received) once per dataset position, passed through a release policy.

    Used when inputs are not augmented: the benchmark's teacher cache, the attacker's stored responses. The
    logits stay where they are (a plain attribute, not a buffer); each batch's rows move to the inputs' device.
    """

    def __init__(self, logits: Tensor, policy: LogitPolicy | None = None) -> None:
        super().__init__()
        self.logits = logits
        self.policy = policy or make_policy("normal")

    def forward(self, inputs: Tensor, batch: Batch) -> Tensor:
        return self.policy(self.logits[batch.indices].float()).to(inputs.device)

    def describe(self) -> dict[str, Any]:
        return {"teacher": "cached", "policy": self.policy.config()}


class Objective(nn.Module, ABC):
    """A loss of the model's logits on one batch, as named weighted terms whose sum is the loss."""

    @abstractmethod
    def forward(self, logits: Tensor, inputs: Tensor, batch: Batch, labels: Tensor) -> LossTerms: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...


class CrossEntropy(Objective):
    """Training on labels: a teacher, or a student from scratch. Term: ``ce``."""

    def forward(self, logits: Tensor, inputs: Tensor, batch: Batch, labels: Tensor) -> LossTerms:
        return {"ce": F.cross_entropy(logits.float(), labels)}

    def describe(self) -> dict[str, Any]:
        return {"objective": "cross_entropy"}


class HardLabelDistillation(Objective):
    """Cross-entropy on the teacher's released top-1 class instead of the true label. Term: ``ce``."""

    def __init__(self, teacher: TeacherSignal) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, logits: Tensor, inputs: Tensor, batch: Batch, labels: Tensor) -> LossTerms:
        return {"ce": F.cross_entropy(logits.float(), self.teacher(inputs, batch).argmax(dim=-1))}

    def describe(self) -> dict[str, Any]:
        return {"objective": "hard_label", **self.teacher.describe()}


class Distillation(Objective):
    """Knowledge distillation, Eq. 1, from any teacher signal. Terms: ``kd`` (alpha tau^2 KL) and ``ce``
    ((1 - alpha) times the cross-entropy on the labels)."""

    def __init__(self, teacher: TeacherSignal, tau: float = KD_TEMPERATURE, alpha: float = KD_ALPHA) -> None:
        if tau <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"need tau > 0 and alpha in [0, 1], got tau={tau}, alpha={alpha}")
        super().__init__()
        self.teacher, self.tau, self.alpha = teacher, tau, alpha

    def forward(self, logits: Tensor, inputs: Tensor, batch: Batch, labels: Tensor) -> LossTerms:
        return kd_loss_terms(logits, self.teacher(inputs, batch), labels, self.tau, self.alpha)

    def describe(self) -> dict[str, Any]:
        return {"objective": "kd", "tau": self.tau, "alpha": self.alpha, **self.teacher.describe()}


class NastyTraining(Objective):
    """The Nasty Teacher, Eq. 2: fit the labels while pushing away from a fixed normal teacher.
    Terms: ``ce`` and ``adversarial`` (-omega tau^2 KL)."""

    def __init__(self, adversary: nn.Module, tau: float, omega: float) -> None:
        super().__init__()
        self.adversary = LiveTeacher(adversary)
        self.tau, self.omega = tau, omega

    def forward(self, logits: Tensor, inputs: Tensor, batch: Batch, labels: Tensor) -> LossTerms:
        return nasty_loss_terms(logits, self.adversary(inputs, batch), labels, self.tau, self.omega)

    def describe(self) -> dict[str, Any]:
        return {"objective": "nasty", "tau": self.tau, "omega": self.omega}
