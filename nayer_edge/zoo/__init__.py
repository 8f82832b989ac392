"""Student model zoo: CIFAR-style classifiers registered by name, timm-style.

Example::

    from nayer_edge.zoo import create_model, list_models
    student = create_model("wrn16_2", num_classes=10, in_channels=3)
"""

from . import mobilenetv2, resnet, small, vgg, wrn  # noqa: F401  (importing registers the models)
from .registry import build_student, create_model, describe_student, list_models, load_factory, register_model

__all__ = [
    "build_student",
    "create_model",
    "describe_student",
    "list_models",
    "load_factory",
    "register_model",
]
