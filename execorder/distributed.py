"""The former name of :mod:`execorder.ranks`, kept so that code written against it runs.

``execorder.distributed.compare`` is ``execorder.ranks.compare``; new code
imports :mod:`execorder.ranks`.
"""

from execorder.ranks import (
    RankComparison,
    RankRecord,
    compare,
    compare_job,
    record_of,
)

__all__ = ["RankComparison", "RankRecord", "compare", "compare_job", "record_of"]
