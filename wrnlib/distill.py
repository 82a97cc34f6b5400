"""Knowledge distillation: the loss and the distillation run.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KDCriterion", "kd_loss", "run_distillation"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9) -> torch.Tensor:
    """Return the knowledge-distillation loss, averaged over the batch.

        loss = ce_weight * CE(s, y) + kd_weight * T^2 * KL(softmax(t / T) || softmax(s / T))

    with student logits s, teacher logits t, labels y and temperature T. The T^2
    factor keeps the gradient of the soft term at the same scale as the hard
    term when T changes (Hinton et al. 2015, section 2). KL is summed over
    classes and averaged over the batch (`reduction="batchmean"`).

    Both weights are named because libraries disagree on what "alpha" weights:
    some put alpha on the KL term, others on the CE term. The defaults, 0.1 on
    CE and 0.9 on KL with T = 4, are the CIFAR settings of Cho & Hariharan,
    "On the Efficacy of Knowledge Distillation" (ICCV 2019), and of the
    `knowledge-distillation-pytorch` reference code (alpha = 0.9 on the KL term).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ce = F.cross_entropy(student_logits, targets)
    if kd_weight == 0:
        return ce_weight * ce
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return ce_weight * ce + kd_weight * temperature ** 2 * kl


class KDCriterion:
    """Training criterion that distils `teacher` into the model being trained.

    The teacher runs in eval mode without gradients on the same augmented batch.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, ce_weight: float = 0.1,
                 kd_weight: float = 0.9) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return kd_loss(logits, teacher_logits, targets, self.temperature, self.ce_weight, self.kd_weight)


def run_distillation(config: dict, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                     threads: int | None = None, progress: bool = False,
                     gpus: list[int] | None = None) -> dict:
    """Train a fresh student WRN-depth-width with KD from the run store's teacher; return metrics."""
    from .models import WideResNet
    from .train import execute_run

    def build(cfg, data, teacher):
        torch.manual_seed(cfg.seed)
        student = WideResNet(cfg.depth, cfg.width, data.num_classes, cfg.dropout)
        criterion = KDCriterion(teacher, cfg.temperature, cfg.ce_weight, cfg.kd_weight)
        return student, criterion, {"kd": {"temperature": cfg.temperature, "ce_weight": cfg.ce_weight,
                                           "kd_weight": cfg.kd_weight}}

    return execute_run(config, build, runs_dir=runs_dir, data_root=data_root, threads=threads,
                       progress=progress, gpus=gpus)
