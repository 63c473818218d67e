"""The model zoo: fully connected baselines and ConvNets from LeNet-5 to VGG.

Each model is a builder function returning a Keras functional model with
named layers that outputs logits. Look models up by name with
:func:`build_model`; ``robust models`` lists them, together with the ready
(trained) models that plugins publish as :class:`ModelPlugin`.
"""

from robust.models.registry import (
    ModelPlugin,
    ModelSpec,
    Option,
    build_model,
    check_buildable,
    check_model_input,
    count_params,
    get_spec,
    ready_models,
    registry,
    validate_options,
)

__all__ = ["ModelPlugin", "ModelSpec", "Option", "build_model", "check_buildable", "check_model_input",
           "count_params", "get_spec", "ready_models", "registry", "validate_options"]
