import copy

import pytest
import torch

from conftest import randomize_batchnorm
from wrnlib.measure import count_parameters
from wrnlib.models import WideResNet
from wrnlib.prune import CRITERIA, prune_model, pruned_arch, round_archs, round_widths

CASES = [(28, 10, 0.8, 2), (28, 4, 0.5, 2), (28, 2, 0.5, 1)]


def _trained_like(depth, width, num_classes=10, seed=0):
    torch.manual_seed(seed)
    return randomize_batchnorm(WideResNet(depth, width, num_classes), seed).eval()


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Map each output filter of a pruned conv back to its row in the original conv.

    The weights are random, so a filter's first eight values occur together in exactly one original row.
    """
    flat = original.flatten(1)
    rows = []
    for filt in pruned.flatten(1):
        candidates = torch.nonzero((flat == filt[0]).any(dim=1)).flatten().tolist()
        hits = [row for row in candidates if torch.isin(filt[:8], flat[row]).all()]
        assert len(hits) == 1, "a pruned filter must come from exactly one original filter"
        rows.append(hits[0])
    return rows


def _kept_channels(original_bn, pruned_bn) -> list[int]:
    """Map the channels a pruned BatchNorm kept to original indices through their random running means."""
    means = original_bn.running_mean.tolist()
    return [means.index(value) for value in pruned_bn.running_mean.tolist()]


def _mask_removed_channels(model: WideResNet, pruned: WideResNet) -> WideResNet:
    """Zero, in a copy of `model`, the inputs of every consumer of a channel that pruning removed."""
    masked = copy.deepcopy(model)
    stages, pruned_stages = masked.groups, pruned.groups
    for g in range(3):
        for block, small in zip(stages[g], pruned_stages[g]):
            removed = sorted(set(range(block.bn2.num_features)) - set(_kept_channels(block.bn2, small.bn2)))
            block.conv2.weight.data[:, removed] = 0
        # The BatchNorm that reads this group's stream: the next group's first bn1, or the final one.
        reader, small_reader = (stages[g + 1][0].bn1, pruned_stages[g + 1][0].bn1) if g < 2 \
            else (masked.bn, pruned.bn)
        removed = sorted(set(range(reader.num_features)) - set(_kept_channels(reader, small_reader)))
        for block in list(stages[g])[1:]:
            block.conv1.weight.data[:, removed] = 0
        if g < 2:
            nxt = stages[g + 1][0]
            nxt.conv1.weight.data[:, removed] = 0
            nxt.shortcut.weight.data[:, removed] = 0
        else:
            masked.fc.weight.data[:, removed] = 0
    return masked


@pytest.mark.parametrize("depth,width,ratio,student_width", CASES)
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_pruned_logits_equal_masked_original(depth, width, ratio, student_width, criterion):
    model = _trained_like(depth, width)
    pruned = prune_model(model, ratio, criterion=criterion, seed=1)
    masked = _mask_removed_channels(model, pruned)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = masked(x)
        actual = pruned.eval()(x)
        full = model(x)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0), (actual - expected).abs().max()
    # The masking must matter, or the comparison proves nothing.
    assert not torch.allclose(full, expected, atol=1e-3)


@pytest.mark.parametrize("depth,width,ratio,student_width", CASES)
def test_widths_and_forward(depth, width, ratio, student_width):
    pruned = prune_model(_trained_like(depth, width, 100), ratio)
    k = student_width
    assert pruned.arch.stream == (16 * k, 32 * k, 64 * k)
    assert set(pruned.arch.inner) == {16 * k, 32 * k, 64 * k}
    assert pruned.stem.out_channels == 16
    assert pruned.fc.out_features == 100
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_residual_adds_share_indices():
    model = _trained_like(16, 4)
    pruned = prune_model(model, 0.5)
    for g in range(3):
        original, small = model.groups[g], pruned.groups[g]
        reference = _kept_rows(original[0].conv2.weight, small[0].conv2.weight)
        for block, small_block in zip(original, small):
            assert _kept_rows(block.conv2.weight, small_block.conv2.weight) == reference
        assert _kept_rows(original[0].shortcut.weight, small[0].shortcut.weight) == reference


def test_wide_teacher_becomes_native_student():
    pruned = prune_model(_trained_like(28, 10), 0.8)
    assert count_parameters(pruned) == 1_467_610
    native = WideResNet(28, 2, 10)
    native.load_state_dict(pruned.state_dict())  # strict: same names and shapes
    assert pruned.arch == native.arch


def test_28x2_keeps_first_group_shortcut():
    pruned = prune_model(_trained_like(28, 2), 0.5)
    assert pruned.group1[0].shortcut is not None
    assert pruned.group1[0].shortcut.weight.shape == (16, 16, 1, 1)
    assert count_parameters(pruned) - count_parameters(WideResNet(28, 1, 10)) == 16 * 16
    assert not pruned.arch.is_native()


def test_source_model_unchanged():
    model = _trained_like(10, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_model(model, 0.5, criterion="l2")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.arch.stream == (64, 128, 256)


def test_no_masks_left():
    pruned = prune_model(_trained_like(10, 2), 0.5)
    names = list(pruned.state_dict())
    assert not any("mask" in n or n.endswith("_orig") for n in names)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_invalid_ratio_rejected(ratio):
    with pytest.raises(ValueError, match="pruning ratio"):
        prune_model(WideResNet(10, 2, 10), ratio)


def test_ratio_that_empties_a_layer_rejected():
    with pytest.raises(ValueError, match=r"would leave a layer of \d+ channels with 0"):
        prune_model(WideResNet(10, 1, 10), 0.99)


def test_unknown_criterion_rejected():
    with pytest.raises(ValueError, match="unknown pruning criterion 'l3'"):
        prune_model(WideResNet(10, 2, 10), 0.5, criterion="l3")


def test_random_criterion_is_seeded():
    model = _trained_like(10, 2)
    a = prune_model(model, 0.5, criterion="random", seed=3)
    b = prune_model(model, 0.5, criterion="random", seed=3)
    c = prune_model(model, 0.5, criterion="random", seed=4)
    assert torch.equal(a.group2[0].conv2.weight, b.group2[0].conv2.weight)
    assert not torch.equal(a.group2[0].conv2.weight, c.group2[0].conv2.weight)


def test_round_widths_land_on_target():
    widths = round_widths(32, 0.5, 10)
    assert len(widths) == 10
    assert widths[-1] == 16
    assert all(a >= b for a, b in zip(widths, widths[1:]))
    assert round_widths(160, 0.2, 10)[-1] == 32
    assert round_widths(64, 0.5, 1) == [32]


@pytest.mark.parametrize("rounds", [0, -1, 1.5, True])
def test_round_widths_rejects_bad_rounds(rounds):
    with pytest.raises(ValueError, match=r"rounds must be an integer >= 1, got " + repr(rounds).replace(".", r"\.")):
        round_widths(32, 0.5, rounds)


@pytest.mark.parametrize("depth,width,ratio,student_width", CASES)
def test_round_archs_land_on_target(depth, width, ratio, student_width):
    arch = WideResNet(depth, width, 10).arch
    archs = round_archs(arch, ratio, 10)
    assert len(archs) == 10
    assert archs[-1] == prune_model(WideResNet(depth, width, 10), ratio).arch
    assert archs[-1].stream == (16 * student_width, 32 * student_width, 64 * student_width)
    keep = 1 - ratio
    for g, channels in enumerate(arch.stream):
        widths = [a.stream[g] for a in archs]
        assert widths == round_widths(channels, keep, 10)
        assert widths[0] == round(channels * keep ** 0.1)
    for b, channels in enumerate(arch.inner):
        assert [a.inner[b] for a in archs] == round_widths(channels, keep, 10)
    assert all(a.shortcuts == arch.shortcuts for a in archs)


def test_round_archs_keep_stem_stream():
    # WRN-d-1's first group reads the stem's 16 channels through an identity shortcut.
    archs = round_archs(WideResNet(10, 1, 10).arch, 0.5, 3)
    assert [a.stream for a in archs] == [(16, 25, 51), (16, 20, 40), (16, 16, 32)]
    assert [a.inner[0] for a in archs] == [13, 10, 8]


def test_round_archs_reject_bad_ratio():
    arch = WideResNet(10, 1, 10).arch
    with pytest.raises(ValueError, match=r"invalid pruning ratio 1\.2"):
        round_archs(arch, 1.2, 4)
    with pytest.raises(ValueError, match=r"pruning ratio 0\.99 would leave a layer of 32 channels with 0"):
        round_archs(arch, 0.99, 4)


def test_pruned_arch_matches_prune_model():
    model = _trained_like(10, 4)
    assert pruned_arch(model.arch, 0.5) == prune_model(model, 0.5).arch
