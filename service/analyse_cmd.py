"""`sectra-bridge analyse`: a run's steps for local slide files, for research, with no Redis or Sectra.

Each SLIDE_FILE goes through `workers.local_analysis.analyse_slide` (the
pipeline's de-identification, upload, estimate, submit and summary code) and
its results are written to `--out`, named after the argument:
`<name>.summary.json` (the figures, hotspot boxes in level-0 slide pixels) and
`<name>.geojson` (the hotspots as QuPath annotations; README "Research use: QuPath").

Resumable: `--out/.sectra-bridge/` keeps, per de-identified content (SHA-256)
and app, the Strand upload (with its resumable-session checkpoint) and the job;
run again, the same slide reuses the upload and follows the same job.

This module is the terminal side: progress bars (tqdm, drawn only on a
terminal), the question asked when an estimate is above the app's
`credit_ceiling` (`--yes` answers it; with no terminal and no `--yes` the slide
is refused), and what is printed. Input paths are never printed (file names
often are accession numbers): slides are numbered by argument.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from strand_client import JobEvent
    from workers.local_strand import JobProgress, UploadProgress

Echo = Callable[[str], None]


class TerminalHooks:
    """`workers.local_analysis.Hooks` for a person at a terminal (or a script, which nobody asks)."""

    def __init__(self, echo: Echo, *, assume_yes: bool) -> None:
        self.echo = echo
        self._assume_yes = assume_yes

    def confirm(self, estimated: int, ceiling: int) -> bool:
        if self._assume_yes:
            return True
        if not sys.stdin.isatty():
            return False
        return click.confirm(
            f"This slide would cost {estimated} Strand credits, above the app's ceiling of {ceiling}. "
            "Submit it?",
            default=False,
            err=True,
        )

    @contextmanager
    def upload_progress(self, total: int) -> Iterator[UploadProgress]:
        with _bar(total=total, unit="B", unit_scale=True, desc="upload") as bar:
            yield lambda sent, _total: bar.update(sent - bar.n)

    @contextmanager
    def job_progress(self, job_id: str) -> Iterator[JobProgress]:
        with _bar(total=100, unit="%", desc=f"job {job_id}") as bar:

            def on_event(event: JobEvent) -> None:
                if event.progress is not None:
                    bar.update(max(0, round(event.progress * 100) - bar.n))
                bar.set_postfix_str(event.status)

            yield on_event


def _bar(**options: Any) -> Any:
    """A tqdm bar on stderr; `disable=None` draws it only on a terminal, so pipes and logs stay clean."""
    from tqdm import tqdm

    return tqdm(disable=None, leave=False, file=sys.stderr, **options)


def _numbered(echo: Echo, number: int) -> Echo:
    return lambda line: echo(f"[{number}] {line}")


def run_analyse(
    slides: list[Path], *, app_id: str, out_dir: Path, assume_yes: bool, timeout: float, echo: Echo
) -> int:
    """Analyse every slide in turn; exit status 1 when any was not analysed."""
    from workers.apps import AppsConfigError, load_apps
    from workers.jsonfile import write_json
    from workers.local_analysis import analyse_slide
    from workers.local_strand import SlideNotAnalysed, client_from_settings
    from workers.settings import get_settings

    settings = get_settings()
    try:
        apps = load_apps(settings.apps_file)
    except AppsConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if app_id not in apps:
        raise click.ClickException(f"unknown app {app_id!r}; configured apps: {', '.join(sorted(apps))}")
    if settings.strand_api_key is None:
        raise click.ClickException("STRAND_API_KEY is not set (a Strand key, sk-strand-...)")
    stems = [slide.stem for slide in slides]
    if len(set(stems)) != len(stems):
        raise click.ClickException("two slides share a file name: their outputs would overwrite each other")
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    with client_from_settings(settings) as strand:
        for number, slide in enumerate(slides, start=1):
            hooks = TerminalHooks(_numbered(echo, number), assume_yes=assume_yes)
            try:
                analysis = analyse_slide(slide, apps[app_id], strand, out_dir, hooks, timeout=timeout)
            except SlideNotAnalysed as exc:
                failed += 1
                hooks.echo(f"{exc.kind}: {exc}")
                continue
            write_json(out_dir / f"{slide.stem}.summary.json", analysis.summary)
            write_json(out_dir / f"{slide.stem}.geojson", analysis.geojson)
            hooks.echo(f"summary and GeoJSON written to --out (job {analysis.job_id})")
    echo(f"{len(slides) - failed} of {len(slides)} slides analysed")
    return 1 if failed else 0


@click.command("analyse")
@click.argument(
    "slides",
    metavar="SLIDE_FILE...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--app", "app_id", default="strand-default", show_default=True, help="The app (marker panel).")
@click.option(
    "--out",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the summaries, GeoJSON files and the resume state go.",
)
@click.option("--yes", "assume_yes", is_flag=True, help="Accept estimates above the app's credit ceiling.")
@click.option(
    "--timeout",
    default=6 * 3600.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds to follow each job; run again to keep following.",
)
def analyse(slides: tuple[Path, ...], app_id: str, out_dir: Path, assume_yes: bool, timeout: float) -> None:
    """De-identify, analyse and summarise local slides; write JSON summaries and QuPath GeoJSON."""
    raise SystemExit(
        run_analyse(
            list(slides),
            app_id=app_id,
            out_dir=out_dir,
            assume_yes=assume_yes,
            timeout=timeout,
            echo=click.echo,
        )
    )
