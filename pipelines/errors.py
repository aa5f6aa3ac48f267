"""The one error type for a request's bad input, wherever it is found.

Validation, input images, URL fetches and the LoRA library all raise `FieldError`; each
problem names its field and what the field accepts, and every way in (the page, gradio_client,
each REST API) shows it in its own words.
"""

from __future__ import annotations

from collections.abc import Sequence


class FieldError(ValueError):
    """One or more fields are invalid. `field` and `message` are the first problem's;
    `problems` lists every one, the first included."""

    def __init__(self, field: str, message: str, also: Sequence[FieldError] = ()):
        super().__init__("; ".join([message, *(problem.message for problem in also)]))
        self.field = field
        self.message = message
        self.problems: tuple[FieldError, ...] = (self, *also)

    @classmethod
    def collect(cls, problems: Sequence[FieldError]) -> FieldError:
        """One error listing all of `problems` (at least one)."""
        first, *rest = problems
        return cls(first.field, first.message, rest)
