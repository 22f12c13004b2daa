"""The paper's published numbers that a benchmark's report sets its own beside.

These are values *reported* in "Stingy Teacher: Sparse Logits Suffice to Fail Knowledge Distillation", not
measured here: Table 1 (CIFAR-10, the original binary release; a ResNet-18 teacher, 200 epochs, r = 0.2, the Nasty
Teacher with Ma et al.'s tau_A 4 and omega 0.04). Accuracies are test accuracy in percent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperStudent:
    """One student column: its architecture (our model name), and whether it is the teacher's own (self-KD);
    ``accuracy`` by cell: ``scratch`` (the student baseline), ``normal``, ``nasty`` and ``stingy`` KD."""

    label: str
    arch: str
    accuracy: dict[str, float]
    self_kd: bool = False


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's comparison tables: the teacher, its accuracy by kind (normal, nasty, stingy), the students."""

    caption: str
    teacher: str
    teacher_accuracy: dict[str, float]
    students: tuple[PaperStudent, ...]


TABLE1_CIFAR10 = PaperTable(
    caption="the paper's Table 1 (CIFAR-10, ResNet-18 teacher, 200 epochs; reported values, not run here)",
    teacher="ResNet-18",
    teacher_accuracy={"normal": 95.13, "nasty": 94.56, "stingy": 95.13},
    students=(
        PaperStudent("CNN", "cnn", {"scratch": 86.64, "normal": 87.75, "nasty": 71.83, "stingy": 82.77}),
        PaperStudent("ResNetC-20", "resnetc20", {"scratch": 92.28, "normal": 92.49, "nasty": 74.22, "stingy": 68.86}),
        PaperStudent("ResNetC-32", "resnetc32", {"scratch": 93.04, "normal": 93.31, "nasty": 79.66, "stingy": 74.34}),
        PaperStudent("ResNet-18", "resnet18", {"scratch": 95.13, "normal": 95.39, "nasty": 91.55, "stingy": 92.46}, self_kd=True),
    ),
)

# The paper's table each preset mirrors.
PAPER_TABLES: dict[str, PaperTable] = {"paper-cifar10": TABLE1_CIFAR10, "cifar10-cpu": TABLE1_CIFAR10}
