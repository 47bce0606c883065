"""One exception tree and the exit codes of the contract (docs/reference.md §6)."""

EXIT_OK = 0  # done
EXIT_USAGE = 2  # usage or configuration error, with a one-line message naming the bad value
EXIT_BREAKER = 3  # stopped with the breaker open (systemic failure)
EXIT_STATE = 4  # state problem: locked by another qsup, unwritable, corrupt, full


class QsupError(Exception):
    """Base of every error qsup reports to the user as one line."""

    exit_code = 1


class ConfigError(QsupError):
    """A configuration value or command-line flag is wrong."""

    exit_code = EXIT_USAGE


class StateError(QsupError):
    """The LMDB state directory cannot be used."""

    exit_code = EXIT_STATE


class StateLocked(StateError):
    """Another qsup holds the state directory."""


class StateFull(StateError):
    """The LMDB map or the disk under it is full."""


class QueueError(QsupError):
    """The queue refused a move or a deletion (another file system, an immutable or
    read-only directory): qsup stops safely; the message stays where it was."""

    exit_code = EXIT_STATE


class NotFound(QsupError):
    """A quarantined message named on the command line does not exist."""

    exit_code = EXIT_USAGE
