"""Errors the CLI turns into one line and an exit code."""


class EraseError(Exception):
    """Bad input, with its fix in the message. The CLI prints it as one line and exits with 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last checkpoint is kept so the run can be inspected or resumed."""
