"""Errors the executor raises after a step."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .step import StepOutput


class BoundsError(RuntimeError):
    """A descriptor index was out of range on the device.

    The kernels redirected it (nothing outside a buffer was read or written) and
    counted it; ``problems`` maps each field to (rows, request ids). ``output`` holds
    the step's results for every other request: the step loses nothing else.
    """

    def __init__(
        self, problems: dict[str, tuple[list[int], list[str]]], output: StepOutput
    ) -> None:
        parts = []
        for field, (rows, ids) in problems.items():
            who = ", ".join(repr(i) for i in ids) if ids else "padding rows only"
            shown = rows[:8] + (["..."] if len(rows) > 8 else [])
            parts.append(f"{field} rows {shown} (requests: {who})")
        super().__init__(
            "out-of-range index redirected on the device: "
            + "; ".join(parts)
            + ". Those requests' results were dropped; the others are in .output"
        )
        self.problems = problems
        self.output = output
        self.field = next(iter(problems))
        self.request_ids = sorted({i for _, ids in problems.values() for i in ids})
