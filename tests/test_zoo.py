"""Student zoo: registry, user factories, and every model's shapes, parameter counts and gradients."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from nayer_edge.core.errors import UserError
from nayer_edge.zoo import build_student, create_model, describe_student, list_models, load_factory

EXPECTED_MODELS = [
    "cnn_small",
    "cnn_tiny",
    "mobilenetv2",
    "resnet18",
    "resnet34",
    "vgg11",
    "wrn16_1",
    "wrn16_2",
    "wrn40_1",
    "wrn40_2",
]

# Parameter counts at 3 input channels and 10 classes, with a tolerance band.
EXPECTED_PARAMS = {
    "resnet18": 11.17e6,
    "resnet34": 21.28e6,
    "wrn40_2": 2.24e6,
    "wrn40_1": 0.56e6,
    "wrn16_2": 0.69e6,
    "wrn16_1": 0.175e6,
    "vgg11": 9.23e6,
    "mobilenetv2": 2.24e6,
    "cnn_small": 95e3,
    "cnn_tiny": 20e3,
}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_is_exactly_the_zoo():
    assert list_models() == EXPECTED_MODELS


@pytest.mark.parametrize("name", EXPECTED_MODELS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shapes_at_small_and_cifar_sizes(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        for size in (8, 32):
            logits = model(torch.randn(2, in_channels, size, size))
            assert logits.shape == (2, 7)
            assert torch.isfinite(logits).all()


def test_forward_at_64_pixels():
    model = create_model("wrn16_1", num_classes=5, in_channels=3, input_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_param_counts_are_plausible(name):
    count = _num_params(create_model(name, num_classes=10, in_channels=3))
    assert count == pytest.approx(EXPECTED_PARAMS[name], rel=0.05)


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_models_use_batchnorm(name):
    model = create_model(name, num_classes=10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_train_mode_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_channels=1).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 1, 16, 16)), torch.tensor([0, 3]))
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(UserError, match=r"unknown model 'resnt18' \(did you mean 'resnet18'\?\); available: .*wrn40_2"):
        create_model("resnt18", num_classes=10)


def test_unknown_model_without_close_match_lists_available():
    with pytest.raises(UserError) as info:
        create_model("zzzzzz", num_classes=10)
    assert "did you mean" not in str(info.value)
    assert "cnn_small" in str(info.value)


def test_non_positive_num_classes_is_a_user_error():
    with pytest.raises(UserError, match="num_classes"):
        create_model("cnn_tiny", num_classes=0)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module file `my_students_zoo_test.py` in a fresh working directory, removed from sys.modules after."""
    module_name = "my_students_zoo_test"
    (tmp_path / f"{module_name}.py").write_text(
        "from torch import nn\n"
        "def tiny(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),\n"
        "                         nn.LazyLinear(num_classes))\n"
        "def wants_input_size(num_classes, in_channels, input_size):\n"
        "    return nn.Linear(1, 1)\n"
        "def not_a_module(num_classes, in_channels):\n"
        "    return 42\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield module_name
    sys.modules.pop(module_name, None)


def test_load_factory_imports_a_local_module_file(user_module):
    factory = load_factory(f"{user_module}:tiny")
    model = factory(num_classes=3, in_channels=1)
    assert isinstance(model, nn.Module)


def test_load_factory_accepts_a_file_path(user_module):
    factory = load_factory(f"{user_module}.py:tiny")
    assert callable(factory)


@pytest.mark.parametrize(
    ("spec_template", "message"),
    [
        ("{m}", "must look like 'package.module:factory'"),
        ("{m}:", "must look like 'package.module:factory'"),
        (":tiny", "must look like 'package.module:factory'"),
        ("no_such_module_xyz:tiny", "module 'no_such_module_xyz' not found"),
        ("no_such_file_xyz.py:tiny", "not found"),
        ("{m}:tiyn", r"has no attribute 'tiyn' \(did you mean 'tiny'\?\)"),
        ("{m}:NOT_CALLABLE", "not a callable"),
    ],
)
def test_load_factory_failures_are_user_errors(user_module, spec_template, message):
    with pytest.raises(UserError, match=message):
        load_factory(spec_template.format(m=user_module))


def test_build_student_from_registered_name():
    model = build_student("cnn_tiny", num_classes=3, in_channels=1, input_size=16)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_build_student_from_user_factory(user_module):
    model = build_student(f"{user_module}:tiny", num_classes=3, in_channels=1, input_size=8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_build_student_rejects_a_factory_returning_a_non_module(user_module):
    with pytest.raises(UserError, match="returned a int, not a torch nn.Module"):
        build_student(f"{user_module}:not_a_module", num_classes=3, in_channels=1, input_size=8)


def test_build_student_names_a_factory_with_the_wrong_signature(user_module):
    with pytest.raises(UserError, match="wants_input_size' must accept"):
        build_student(f"{user_module}:wants_input_size", num_classes=3, in_channels=1, input_size=8)


def test_describe_student_rebuilds_the_same_architecture():
    original = build_student("wrn16_1", num_classes=5, in_channels=1, input_size=16)
    spec = describe_student("wrn16_1", num_classes=5, in_channels=1, input_size=16)
    assert spec == {"spec": "wrn16_1", "num_classes": 5, "in_channels": 1, "input_size": 16}
    rebuilt = build_student(**spec)
    rebuilt.load_state_dict(original.state_dict())
