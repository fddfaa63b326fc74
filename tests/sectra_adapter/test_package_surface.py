"""The package's public names: every one in `__all__` resolves, and the drawing stack stays unloaded
until a result builder is first asked for (what keeps a slide download's process small)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sectra_adapter


def test_every_public_name_resolves_to_what_its_module_defines() -> None:
    for name in sectra_adapter.__all__:
        assert getattr(sectra_adapter, name) is not None, name
    from sectra_adapter._results import build_final_result

    assert sectra_adapter.build_final_result is build_final_result
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = sectra_adapter.no_such_name  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_drawing_library_until_a_builder_is_used() -> None:
    probe = (
        "import sys\n"
        "from sectra_adapter import SectraAdapter\n"
        "print(sorted(m for m in ('shapely', 'contourpy', 'sectra_adapter._results') if m in sys.modules))\n"
        "from sectra_adapter import build_final_result\n"
        "print('shapely' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    before, after = done.stdout.split("\n")[:2]
    assert before == "[]"
    assert after == "True"
