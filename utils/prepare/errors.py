"""The error of dataset preparation (its message names the file and says what to do)."""
from __future__ import annotations


class PrepareError(Exception):
    """A preparation problem; the message names the file and says what to do."""
