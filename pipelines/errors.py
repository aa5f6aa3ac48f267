"""The errors a request meets on its way, wherever they are found.

Validation, input images, URL fetches and the LoRA library all raise `FieldError`; each
problem names its field and what the field accepts, and every way in (the page, gradio_client,
each REST API) shows it in its own words. A request that validated can still be refused
(`ServerBusy`), stopped (`GenerationCancelled`) or fail (`GenerationError`).
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

    def __reduce__(self):  # pickled whole: a Ray worker's errors cross to the ingress
        return type(self), (self.field, self.message, self.problems[1:])

    @classmethod
    def collect(cls, problems: Sequence[FieldError]) -> FieldError:
        """One error listing all of `problems` (at least one)."""
        first, *rest = problems
        return cls(first.field, first.message, rest)


class GenerationError(RuntimeError):
    """A request that validated but could not be served; the message is for the user."""

    def __init__(self, message: str, title: str = "Generation failed"):
        super().__init__(message)
        self.title = title

    def __reduce__(self):  # as FieldError's
        return type(self), (str(self), self.title)


class GenerationCancelled(GenerationError):
    def __init__(self):
        super().__init__("The request was cancelled.", title="Cancelled")

    def __reduce__(self):
        return GenerationCancelled, ()


class ServerBusy(GenerationError):
    def __init__(self, waiting: int):
        super().__init__(f"The server is busy ({waiting} requests are waiting); try again in a moment.",
                         title="Busy")
        self.waiting = waiting

    def __reduce__(self):
        return ServerBusy, (self.waiting,)
