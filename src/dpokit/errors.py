"""Every error dpokit raises on purpose, in one place (this module imports nothing of dpokit).

A user mistake ends in one of these, with the key, file, line or record named in the message; the
command line turns them into a one-line error and a non-zero exit code instead of a traceback.

    ConfigError      a config key, value or combination is wrong (raised before any model loads)
    DataError        a data file or record is malformed (names the file, the line and the field)
    CheckpointError  a checkpoint is missing, incomplete or does not match the run
    NonFiniteError   too many consecutive non-finite steps: the run stopped with a checkpoint
    UnsafePathError  a path from a config or a run directory leads outside where it may write
"""

from typing import Optional


class ConfigError(ValueError):
    pass


class DataError(ValueError):
    """A record that cannot be used, with where it is and which field is wrong.

    ``content=True`` marks a well-formed record whose content is unusable (an empty completion,
    chosen identical to rejected): those may be skipped (counted and logged) by policy, while
    structural errors (bad JSON, missing fields, wrong types) always stop the run.
    """

    def __init__(self, location: str, field_name: Optional[str], problem: str, fix: str = "",
                 content: bool = False):
        self.location = location
        self.field = field_name
        self.problem = problem
        self.content = content
        where = f"{location}" + (f", field '{field_name}'" if field_name else "")
        message = f"{where}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class CheckpointError(RuntimeError):
    pass


class NonFiniteError(RuntimeError):
    pass


class UnsafePathError(ValueError):
    """A name would resolve outside the directory it must stay in."""
