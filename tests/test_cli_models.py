"""``edgecloud models list`` prints every model name whole, in any terminal width or through a pipe."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgecloud.models import zoo


@pytest.mark.parametrize("columns", ["30", "80", "200"])
def test_model_names_are_never_cut(columns) -> None:
    out = subprocess.run([sys.executable, "-m", "edgecloud", "models", "list"], capture_output=True, text=True,
                         env={"COLUMNS": columns, "PATH": "/usr/bin:/bin"}, check=True).stdout
    for spec in zoo.known_models():
        assert spec.name in out, (columns, out)
