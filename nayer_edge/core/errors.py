"""Errors a user can fix. The CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""


class MissingDependencyError(UserError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package} is not installed; install it with: pip install 'nayer-edge[{extra}]'"
        )


def first_line(err: BaseException, default: str | None = None, limit: int = 300) -> str:
    """The first non-blank line of an exception's message, at most ``limit`` characters; ``default`` (or the
    exception's type name) when it has none. For one-line error messages that quote a library's error."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return default if default is not None else type(err).__name__
