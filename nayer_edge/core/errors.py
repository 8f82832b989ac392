"""Errors a user can fix. The CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""


class MissingDependencyError(UserError):
    """A dependency imported on demand is not installed; the message names the extra to install, or the package
    itself for a base dependency (``extra`` None) that a partial install lacks."""

    def __init__(self, package: str, extra: str | None):
        fix = f"pip install 'nayer-edge[{extra}]'" if extra else f"pip install {package} (nayer-edge needs it)"
        super().__init__(f"{package} is not installed; install it with: {fix}")


def first_line(err: BaseException, default: str | None = None, limit: int = 300) -> str:
    """The first non-blank line of an exception's message, at most ``limit`` characters; ``default`` (or the
    exception's type name) when it has none. For one-line error messages that quote a library's error."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return default if default is not None else type(err).__name__
