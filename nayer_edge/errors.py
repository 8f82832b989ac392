"""Errors a user can fix. The CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""


class MissingDependencyError(UserError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package} is not installed; install it with: pip install 'nayer-edge[{extra}]'"
        )
