"""Errors a user can fix (the CLI prints their message on one line and exits with code 2) and failures of a
runtime the user's input did not cause (one line, exit code 3)."""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""


class RuntimeFailure(Exception):
    """A runtime failed while running good input (onnxruntime or TensorRT raised, out of memory): exit code 3."""


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
