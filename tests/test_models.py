import pytest
import torch

from wrnlib.measure import count_parameters
from wrnlib.models import ArchSpec, WideResNet, build_model, parse_model_name

# Published parameter counts of pre-activation WRNs (10-class, 100-class heads).
EXPECTED_PARAMS = {
    (28, 10): (36_479_194, 36_536_884),
    (28, 4): (5_849_050, 5_872_180),
    (28, 2): (1_467_610, 1_479_220),
    (28, 1): (369_498, 375_348),
}


@pytest.mark.parametrize("depth,width", sorted(EXPECTED_PARAMS))
@pytest.mark.parametrize("head", [0, 1])
def test_parameter_counts_match_published(depth, width, head):
    num_classes = (10, 100)[head]
    model = WideResNet(depth, width, num_classes)
    assert count_parameters(model) == EXPECTED_PARAMS[(depth, width)][head]


@pytest.mark.parametrize("depth", [27, 8, 4, 0, -2, 30])
def test_invalid_depth_rejected(depth):
    with pytest.raises(ValueError, match=f"invalid WRN depth {depth}"):
        WideResNet(depth, 2, 10)


@pytest.mark.parametrize("width", [0, -1, 1.5])
def test_invalid_width_rejected(width):
    with pytest.raises(ValueError, match="width"):
        WideResNet(10, width, 10)


def test_forward_shape_and_name():
    model = WideResNet(16, 2, 100).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 100)
    assert model.name == "WRN-16-2"


def test_first_group_shortcut_only_when_channels_change():
    assert WideResNet(10, 1, 10).group1[0].shortcut is None
    assert WideResNet(10, 2, 10).group1[0].shortcut is not None
    assert all(WideResNet(10, 1, 10).groups[g][0].shortcut is not None for g in (1, 2))


def test_archspec_round_trip_and_native():
    spec = ArchSpec.native(16, 4, 10)
    again = ArchSpec.from_dict(spec.to_dict())
    assert again == spec
    assert spec.is_native()
    assert build_model(spec.to_dict()).arch == spec


def test_archspec_rejects_missing_projection():
    with pytest.raises(ValueError, match="projection shortcut"):
        ArchSpec(10, 10, (32, 64, 128), (32, 64, 128), (False, True, True))


def test_parse_model_name():
    assert parse_model_name("WRN-28-10") == (28, 10)
    with pytest.raises(ValueError, match="wrn-DEPTH-WIDTH"):
        parse_model_name("resnet18")
