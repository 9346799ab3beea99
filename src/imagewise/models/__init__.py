"""Image-classification models: a registry of built-in models with timm as the fallback.

``create_model`` is the only way to build a model. Importing this package imports each family
module explicitly, which registers its models.
"""

from imagewise.models import (  # noqa: F401  (registers)
    capsnet,
    classic,
    hog_svm,
    resnet9,
    timm_family,
)
from imagewise.models.factory import create_model
from imagewise.models.registry import is_registered, list_models, register_model
from imagewise.models.summary import count_flops, count_parameters, describe_models

__all__ = [
    "count_flops",
    "count_parameters",
    "create_model",
    "describe_models",
    "is_registered",
    "list_models",
    "register_model",
]
