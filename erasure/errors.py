"""Errors the CLI turns into one line and an exit code."""

import re

FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")


class EraseError(ValueError):
    """Bad input, with its fix in the message. The CLI prints it as one line and exits with 2.

    A config field named in the message is written in backticks (`mask_ratio`); the CLI shows the
    field's flag instead (--mask-ratio), the Python API the field name.
    """

    def __str__(self) -> str:
        return FIELD.sub(r"\1", super().__str__())

    def with_flags(self, flags: dict[str, str]) -> str:
        """The message with each backticked field named by its command-line flag."""
        return FIELD.sub(lambda m: flags.get(m.group(1), m.group(1)), super().__str__())


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last checkpoint is kept so the run can be inspected or resumed."""


def shorten(text, limit: int = 60) -> str:
    """`text` as repr, cut to `limit` characters: a user's 300-word input does not fill an error line."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[: limit - 1] + "…")
