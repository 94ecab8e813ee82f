"""Loading: a TARGET into a model, and forward's inputs for a real run."""

from execorder.loading.inputs import Inputs, InputSpec, input_specs, parse_input
from execorder.loading.target import (
    DEVICES,
    LoadedTarget,
    build,
    check_device,
    load_target,
    resolve_inputs,
    resolve_target,
    split_target,
    target_file,
)

__all__ = [
    "DEVICES",
    "InputSpec",
    "Inputs",
    "LoadedTarget",
    "build",
    "check_device",
    "input_specs",
    "load_target",
    "parse_input",
    "resolve_inputs",
    "resolve_target",
    "split_target",
    "target_file",
]
