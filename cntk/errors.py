"""The error every impossible network description raises."""
from __future__ import annotations


class NetworkError(ValueError):
    """An impossible network description; ``field`` names the offending part."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
