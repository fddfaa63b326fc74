"""`sectra-bridge deidentify`: the pipeline's de-identification and verification, for hospital IT.

For a research export, or to check a slide before a run: each argument is one
slide (a file; a directory of one slide's files, such as DICOM instances; or an
MRXS, as its `.mrxs` file or a directory holding it and its folder). The slide is
copied to a private staging directory under `--out` (the originals are never
touched), de-identified and verified by `workers.deidentify` exactly as a run
does, and written to `--out` under a neutral name.

What is printed names formats, images and fields, never values; input paths are
not printed either (file names often are accession numbers): slides are
numbered by argument. Exit status 1 when any slide was refused.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import click

Echo = Callable[[str], None]


def slide_inputs(argument: Path) -> list[Path]:
    """The files of the slide an argument names (a directory's own files, plus an MRXS folder's)."""
    if argument.is_file():
        folder = argument.with_suffix("")
        extra = _files(folder) if argument.suffix.lower() == ".mrxs" and folder.is_dir() else []
        return [argument, *extra]
    files = _files(argument)
    for path in files:
        folder = path.with_suffix("")
        if path.suffix.lower() == ".mrxs" and folder.is_dir():
            files += _files(folder)
    return files


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def run_deidentify(arguments: list[Path], out_dir: Path, extra_identifiers: list[str], echo: Echo) -> int:
    from workers.deidentify import DeidentificationError

    out_dir.mkdir(parents=True, exist_ok=True)
    refused = 0
    for number, argument in enumerate(arguments, start=1):
        run_id = f"slide-{secrets.token_hex(8)}"
        try:
            lines = _one_slide(argument, out_dir, run_id, extra_identifiers)
        except DeidentificationError as exc:
            lines = [f"refused: {exc}"]  # the stage's messages name fields and formats, never values
        except _NoSlide as exc:
            lines = [f"refused: {exc}"]
        except Exception as exc:  # a reader's message may quote a path or a value: print its kind only
            lines = [f"refused: the slide could not be read or written ({type(exc).__name__})"]
        if lines[0].startswith("refused"):
            refused += 1
            _remove_outputs(out_dir, run_id)
        echo(f"[{number}] {lines[0]}")
        for line in lines[1:]:
            echo(f"    {line}")
    echo(f"{len(arguments) - refused} of {len(arguments)} slides de-identified and verified")
    return 1 if refused else 0


class _NoSlide(ValueError):
    pass


def _one_slide(argument: Path, out_dir: Path, run_id: str, extra_identifiers: list[str]) -> list[str]:
    from workers.deidentify import deidentify_slide, identifiers_from_metadata, verify_deidentified

    if not argument.exists():
        raise _NoSlide("the argument names no file or directory")
    inputs = slide_inputs(argument)
    if not inputs:
        raise _NoSlide("the directory holds no file")
    staging = out_dir / f".staging-{run_id}"
    staging.mkdir(mode=0o700)
    try:
        copies = _copy_flat(inputs, staging)
        files, report = deidentify_slide(copies, run_id=run_id, out_dir=out_dir)
        identifiers = identifiers_from_metadata({}, [path.name for path in inputs])
        identifiers.update({f"--identifier {n}": text for n, text in enumerate(extra_identifiers, start=1)})
        verify_deidentified(files, identifiers=identifiers)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [
        f"{report.format}: de-identified and verified",
        f"output:  {', '.join(report.output_files)}",
        f"removed: {', '.join(report.removed_images) or 'nothing'}",
        f"blanked: {', '.join(report.blanked_fields) or 'nothing'}",
    ]


def _copy_flat(inputs: list[Path], staging: Path) -> list[Path]:
    """Copies side by side, as a Sectra download is staged; contents only (no times, no owner)."""
    copies = []
    for path in inputs:
        target = staging / path.name
        if target.exists():
            raise _NoSlide("the slide has two files of one name")
        shutil.copyfile(path, target)
        copies.append(target)
    return copies


def _remove_outputs(out_dir: Path, run_id: str) -> None:
    """A refused slide leaves nothing behind in --out (its names all start with its run id)."""
    for path in out_dir.glob(f"{run_id}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@click.command("deidentify")
@click.argument(
    "arguments", metavar="FILE_OR_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write.",
)
@click.option(
    "--identifier",
    "identifiers",
    multiple=True,
    help="A value that must not survive (accession number, patient name...); repeatable, never printed.",
)
def deidentify(arguments: tuple[Path, ...], out_dir: Path, identifiers: tuple[str, ...]) -> None:
    """De-identify and verify slides as a run does; print what was removed (names, never values)."""
    raise SystemExit(run_deidentify(list(arguments), out_dir, list(identifiers), echo=click.echo))
