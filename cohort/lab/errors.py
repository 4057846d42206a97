"""What the lab raises: ``LabError`` when a request can never succeed as asked, ``LabNotReady``
when it may succeed later (the lab is not up yet, a range is exhausted for now)."""

from __future__ import annotations


class LabError(RuntimeError):
    """The lab cannot do what was asked (bad name, a clash, a member that would not start)."""


class LabNotReady(LabError):
    """The lab cannot do it now; a retry may succeed."""
