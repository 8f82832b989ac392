"""The folders of data files that ship with nayer-edge (``recipes/``, ``export/``): where this installation keeps
them. A source checkout (an editable install) uses its own top-level folders; a wheel's data-files put them under
``<prefix>/share/nayer-edge/`` (pyproject.toml ``[tool.setuptools.data-files]``).

Example::

    >>> data_dir("recipes/targets", ["aliases.yaml"]).name
    'targets'
"""

from __future__ import annotations

import site
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError

__all__ = ["data_dir", "data_dir_candidates"]

CHECKOUT = Path(__file__).resolve().parents[2]
SHARE = Path("share") / "nayer-edge"


def data_dir_candidates(name: str) -> list[Path]:
    """Where ``name`` (``recipes``, ``recipes/targets``, ``export``) may be, in the order looked: the checkout, the
    environment's prefix (a venv or system install), the user base (``pip install --user``)."""
    candidates = [CHECKOUT / name, Path(sys.prefix) / SHARE / name]
    user_base = site.getuserbase()  # not site.USER_BASE: a venv's start-up leaves that unset
    if user_base:
        candidates.append(Path(user_base) / SHARE / name)
    return list(dict.fromkeys(candidates))


def data_dir(name: str, required: Sequence[str]) -> Path:
    """The first candidate folder for ``name`` that holds every file of ``required`` (names inside it); a UserError
    that names the folders looked in when none does."""
    candidates = data_dir_candidates(name)
    for folder in candidates:
        if all((folder / file).is_file() for file in required):
            return folder
    raise UserError(f"nayer-edge's {name}/ ({', '.join(required)}) is not installed: looked in "
                    f"{', '.join(str(c) for c in candidates)}; reinstall nayer-edge")
