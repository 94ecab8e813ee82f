"""What a trace found, as frozen records: the bottom layer, no torch, no presentation."""

from execorder.report.files import load_report, report_written
from execorder.report.kinds import (
    AssumptionKind,
    Category,
    InputSource,
    Mode,
    ParamStatus,
    Severity,
    Word,
    gate_categories,
)
from execorder.report.records import (
    SCHEMA_VERSION,
    Assumption,
    CallTime,
    ExternalUse,
    ModuleCall,
    OutputReach,
    ParamGroup,
    ParamInfo,
    Report,
    Summary,
    Timing,
    jsonable,
    shape_text,
)
from execorder.spelling import ROOT, ROOT_LABEL, label, size_text

__all__ = [
    "ROOT",
    "ROOT_LABEL",
    "SCHEMA_VERSION",
    "Assumption",
    "AssumptionKind",
    "CallTime",
    "Category",
    "ExternalUse",
    "InputSource",
    "Mode",
    "ModuleCall",
    "OutputReach",
    "ParamGroup",
    "ParamInfo",
    "ParamStatus",
    "Report",
    "Severity",
    "Summary",
    "Timing",
    "Word",
    "gate_categories",
    "jsonable",
    "label",
    "load_report",
    "report_written",
    "shape_text",
    "size_text",
]
