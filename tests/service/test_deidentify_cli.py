"""`sectra-bridge deidentify`, run as the installed console script in a subprocess, on generated slides.

Oracles: OpenSlide reads the outputs (no label, macro or any associated image
left; MRXS tissue pixel-identical to the input); a byte search of the outputs,
and of everything the command printed, finds no identifier; the exit status
follows the rule "non-zero on any refusal".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide

from tests.fixtures.mrxs import make_mrxs
from tests.fixtures.slides import make_svs

PHI = {"patientName": "DOE^JANE", "accessionNumber": "ACC-2024-000123", "lisSlideId": "S24-1234-A1"}
MARKER = b"LABEL-MARKER-7f3a9c1e5d"
CLI = Path(sys.executable).with_name("sectra-bridge")


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "deidentify", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _identifier_args() -> list[str]:
    return [part for value in PHI.values() for part in ("--identifier", value)]


def _assert_nothing_identifying(text: str) -> None:
    for value in PHI.values():
        assert value not in text


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def test_svs_and_mrxs_are_deidentified_verified_and_reported_by_name_only(tmp_path: Path) -> None:
    svs = make_svs(
        tmp_path / "in" / f"{PHI['accessionNumber']}.svs", width=512, height=512, phi=PHI, label_marker=MARKER
    )
    mrxs = make_mrxs(tmp_path / "in" / f"{PHI['lisSlideId']}.mrxs", phi=PHI)
    folder_slide = make_mrxs(tmp_path / "in" / "case-folder" / f"{PHI['accessionNumber']}.mrxs", phi=PHI)
    originals = {path: path.read_bytes() for path in [svs, *mrxs.files, *folder_slide.files]}
    with openslide.OpenSlide(str(mrxs.mrxs)) as read:
        tissue = np.asarray(read.read_region((0, 0), 0, read.dimensions))
    out = tmp_path / "out"

    result = _run(svs, mrxs.mrxs, folder_slide.mrxs.parent, "--out", out, *_identifier_args())

    assert result.returncode == 0, result.stdout + result.stderr
    _assert_nothing_identifying(result.stdout + result.stderr)
    assert "3 of 3 slides de-identified and verified" in result.stdout
    assert "removed: label, macro" in result.stdout or "removed: macro, label" in result.stdout
    assert "Slidedat.GENERAL.SLIDE_NAME" in result.stdout
    assert all(path.read_bytes() == content for path, content in originals.items()), "inputs untouched"

    svs_out = [p for p in out.iterdir() if p.suffix == ".svs"]
    mrxs_out = sorted(p for p in out.iterdir() if p.suffix == ".mrxs")
    assert len(svs_out) == 1 and len(mrxs_out) == 2
    with openslide.OpenSlide(str(svs_out[0])) as read:
        assert not {"label", "macro"} & set(read.associated_images)
    for path in mrxs_out:
        with openslide.OpenSlide(str(path)) as read:
            assert dict(read.associated_images) == {}
            assert np.array_equal(np.asarray(read.read_region((0, 0), 0, read.dimensions)), tissue)
    for path in _outputs(out):
        raw = path.read_bytes()
        assert MARKER not in raw
        for value in PHI.values():
            assert value.encode() not in raw, f"{value} in {path.name}"
        assert PHI["accessionNumber"] not in path.as_posix()


def test_a_refused_file_sets_the_exit_status_and_leaves_no_output(tmp_path: Path) -> None:
    not_a_slide = tmp_path / "in" / f"{PHI['accessionNumber']}.png"
    not_a_slide.parent.mkdir()
    not_a_slide.write_bytes(b"\x89PNG\r\n\x1a\n" + PHI["patientName"].encode() + b"\x00" * 200)
    svs = make_svs(tmp_path / "in" / "slide.svs", width=512, height=512, phi=PHI, label_marker=MARKER)
    out = tmp_path / "out"

    result = _run(not_a_slide, svs, tmp_path / "in" / "missing.svs", "--out", out, *_identifier_args())

    assert result.returncode == 1
    _assert_nothing_identifying(result.stdout + result.stderr)
    assert "missing" not in result.stdout + result.stderr, "input paths are never printed"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[1] refused: This slide's format (unrecognised) cannot be de-identified")
    assert any(line.startswith("[2] aperio-svs: de-identified and verified") for line in lines)
    assert any(line.startswith("[3] refused:") for line in lines)
    assert "1 of 3 slides de-identified and verified" in result.stdout
    outputs = _outputs(out)
    assert [path.suffix for path in outputs] == [".svs"], "a refused slide leaves nothing behind"


def test_an_identifier_that_survives_is_a_refusal(tmp_path: Path) -> None:
    """--identifier values are checked like Sectra's: one still present in the output (here the Data
    file's name, which every de-identified MRXS keeps) refuses the slide and removes its output."""
    slide = make_mrxs(tmp_path / "in" / "slide.mrxs", phi=PHI)
    out = tmp_path / "out"
    result = _run(slide.mrxs, "--out", out, "--identifier", "Data0000.dat")
    assert result.returncode == 1
    assert result.stdout.startswith("[1] refused: De-identification could not be confirmed")
    assert _outputs(out) == []
