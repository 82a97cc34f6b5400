import pytest
import torch
import torch.nn.functional as F

from wrnlib.distill import kd_loss


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, generator=generator)
    teacher = torch.randn(16, 10, generator=generator) * 3
    targets = torch.randint(0, 10, (16,), generator=generator)
    return student, teacher, targets


def test_identical_logits_leave_only_ce(batch):
    student, _, targets = batch
    loss = kd_loss(student, student.clone(), targets, temperature=4.0, ce_weight=0.1, kd_weight=0.9)
    assert loss.item() == pytest.approx(0.1 * F.cross_entropy(student, targets).item(), abs=1e-6)


def test_zero_kd_weight_is_cross_entropy(batch):
    student, teacher, targets = batch
    loss = kd_loss(student, teacher, targets, ce_weight=1.0, kd_weight=0.0)
    assert loss.item() == pytest.approx(F.cross_entropy(student, targets).item(), rel=1e-6)


def test_matches_written_formula(batch):
    student, teacher, targets = batch
    t = 3.0
    p_teacher = F.softmax(teacher / t, dim=1)
    log_p_student = F.log_softmax(student / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(1).mean()
    expected = 0.25 * F.cross_entropy(student, targets) + 0.75 * t * t * kl
    loss = kd_loss(student, teacher, targets, temperature=t, ce_weight=0.25, kd_weight=0.75)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl.item() > 0.01


def test_gradient_flows_to_student_only(batch):
    student, teacher, targets = batch
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    kd_loss(student, teacher.detach(), targets).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_invalid_temperature():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(x, x, torch.zeros(2, dtype=torch.long), temperature=0)
