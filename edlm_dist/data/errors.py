"""Errors and the error policy of the data pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad or missing data, named in the message (file, line or byte offset); printed as one line
    by entry points."""

    user_error = True


class TokenizerError(ValueError):
    """A tokenizer problem caused by user input (files, settings, text); printed as one line."""

    user_error = True


@dataclass
class SkipCounter:
    """Records skipped under `data.on_error = "skip"`: how many, and the last few reasons (for logs)."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.count += 1
        self.reasons = (self.reasons + [reason])[-10:]
