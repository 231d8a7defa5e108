"""The agent's error family.

Every error a user can cause (a bad config, a bad DBC, an unreadable log) is raised as one of
these, carrying one human line per problem. The CLI turns them into those lines and an exit code;
nothing here prints or exits.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent reports to a user.

    ``problems`` holds one line per problem, each naming the file, line or field it is about.
    """

    exit_code = 1

    def __init__(self, *problems: str) -> None:
        self.problems: tuple[str, ...] = tuple(problems) or ("unknown error",)
        super().__init__("\n".join(self.problems))


class ConfigError(AgentError):
    """The configuration (or a file it names) cannot be used as written."""

    exit_code = 2


class DbcError(ConfigError):
    """A DBC file cannot be loaded; one line per defect with file, line, what and how to fix."""


class InputError(AgentError):
    """A file named on the command line cannot be read, or an output file cannot be written."""

    exit_code = 2


class SchemaError(AgentError):
    """A spime schema document is malformed, or an update names a schema we do not hold."""

    exit_code = 2


class WireFormatError(AgentError):
    """A binary spime update is truncated, corrupt, or of an unknown version."""

    exit_code = 2


class SourceError(AgentError):
    """A CAN source cannot be opened or read (interface missing, log unreadable)."""

    exit_code = 2


class OutboxError(AgentError):
    """The outbox file cannot be opened or created (corruption is recovered, not raised)."""

    exit_code = 2
