"""Errors about batch descriptors (their own module: ``descriptor`` and ``validation``
both raise them without importing each other)."""

from __future__ import annotations


class DescriptorError(ValueError):
    """A descriptor array holds a value outside its range; names field and row."""

    def __init__(self, field: str, row: int | tuple[int, ...], message: str) -> None:
        super().__init__(f"{field}[{row}]: {message}")
        self.field = field
        self.row = row


class StaleDescriptor(ValueError):
    """The descriptor is not (or no longer) a current step of the scheduler asked."""
