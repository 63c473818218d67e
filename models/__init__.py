"""The model zoo: fully connected baselines and ConvNets from LeNet-5 to VGG.

Each model is a builder function returning a Keras functional model with
named layers that outputs logits. Look models up by name with
:func:`build_model`; ``robust models`` lists them.
"""

from robust.models.registry import (
    ModelSpec,
    build_model,
    check_model_input,
    count_params,
    get_spec,
    registry,
)

__all__ = ["ModelSpec", "build_model", "check_model_input", "count_params", "get_spec", "registry"]
