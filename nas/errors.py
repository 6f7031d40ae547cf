"""One root error for everything a user can get wrong; the CLI turns it into exit code 2."""


class NASError(Exception):
    """A user-facing error: its message is one line naming the file or id, the field and the rule."""


class SpecError(NASError):
    """A search-space spec that breaks a rule."""


class StoreError(NASError):
    """A store that cannot be reached, or a job or candidate that does not exist."""


class LatencyError(NASError):
    """A latency table that is missing, corrupt or of the wrong version."""


def missing_extra(package: str, extra: str) -> NASError:
    """The error for an optional dependency that is not installed."""
    return NASError(f"{package} is not installed: install the extra with `pip install -e '.[{extra}]'`")
