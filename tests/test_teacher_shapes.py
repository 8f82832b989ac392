"""Real-image teachers of other shapes work unchanged: a 1×28×28 grayscale teacher and a 3×32×32 teacher of
an architecture that is not in the zoo, both as TorchScript, distilled into a user's own student given as
``--student module:factory``."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from conftest import TEST_RECIPE, run_cli, train_and_save
from torch import nn

STUDENT_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    def small_convnet(num_classes, in_channels):
        return nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes))
""")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ColourResNet(nn.Module):
    """Not a zoo architecture: stride-2 stem, two residual stages, max-pool head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.stage1 = ResidualBlock(24)
        self.down = nn.Sequential(nn.Conv2d(24, 48, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.stage2 = ResidualBlock(48)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(torch.amax(x, dim=(2, 3)))




@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["gray28", "rgb32"])
def test_other_teacher_shapes_with_user_student(shape, tmp_path):
    from nayer_edge.zoo import create_model

    if shape[0] == 1:
        model = create_model("cnn_small", num_classes=10, in_channels=1, input_size=28)
    else:
        model = ColourResNet()
    teacher = train_and_save(model, shape, tmp_path / "teacher", epochs=10)
    if shape[0] == 3:  # save the custom architecture scripted rather than traced
        torch.jit.save(torch.jit.script(model.eval()), teacher.path)
    assert teacher.accuracy > 0.9
    (tmp_path / "my_students.py").write_text(STUDENT_MODULE)
    out = tmp_path / "run"
    result = run_cli("distill", str(teacher.path), "--out", str(out), "--student", "my_students:small_convnet",
                     "--eval-data", str(teacher.eval_path), "--recipe", TEST_RECIPE, "--epochs", "8",
                     "--synthesis-batch", "100", "--kd-batch", "128", "--kd-steps", "40", "--g-steps", "10",
                     "--device", "cpu", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["teacher_bn_layers"] >= 3
    assert json.loads((out / "student.json").read_text())["input_shape"] == list(shape)
    # Eight short epochs: far above chance (10 %); the long runs are in BENCHMARKS.md.
    assert metrics["student_accuracy"] > 0.6 * metrics["teacher_accuracy"], metrics["student_accuracy"]
    student = torch.jit.load(out / "student.ts")
    assert student(torch.zeros(2, *shape)).shape == (2, 10)
