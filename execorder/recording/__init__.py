"""Recording: the event sink backends feed, and the builder that names and freezes it."""

from execorder.recording.build import build_report
from execorder.recording.events import (
    Assumed,
    CallRecord,
    Checkpointed,
    Event,
    InputWrite,
    Recorder,
    UnseenBackward,
    UsageGroup,
    unique_params,
)
from execorder.recording.tree import ModuleTree, class_name, ddp_registered, module_tree, unwrap

__all__ = [
    "Assumed",
    "CallRecord",
    "Checkpointed",
    "Event",
    "InputWrite",
    "ModuleTree",
    "Recorder",
    "UnseenBackward",
    "UsageGroup",
    "build_report",
    "class_name",
    "ddp_registered",
    "module_tree",
    "unique_params",
    "unwrap",
]
