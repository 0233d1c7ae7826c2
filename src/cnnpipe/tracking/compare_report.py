"""`cnnpipe compare RUN RUN --output report.html|.md`: named trainings side by side, with what the table cannot
show: their validation curves overlaid, their receptive-field tables and first-layer kernels, read back from MLflow.

The HTML embeds its pictures, so it opens offline and travels as one file; the Markdown links PNGs in a folder
named after it (`runs.md` -> `runs_files/`), as a browser's "Save page" does.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cnnpipe import plots
from cnnpipe.analysis import report as field_tables
from cnnpipe.console import printable
from cnnpipe.errors import CnnpipeError
from cnnpipe.outputs import replaced_atomically, write_atomically
from cnnpipe.tracking.compare import Training, column_format, differing, markdown_table

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # else a bar on stderr per file read back
CURVES = ("val/acc", "val/loss")  # logged once an epoch by training, the epoch as the step
FIELD_FILE = "receptive_field.json"  # artifacts of the training run (analysis/report.describe writes them)
KERNELS_FILE = "first_layer_kernels.png"
MARK = "cnnpipe compare report"  # in every report: only a file carrying it is written over
SUFFIXES = (".html", ".md")


@dataclass(frozen=True)
class Report:
    title: str
    runs: list[str]  # a column each: run names, with the id where two share a name
    ids: list[str]
    params: list[list[str]]  # a row per param that differs: its key, then a value per run
    metrics: list[list[str]]  # the same for the metrics
    curves: dict[str, dict[str, tuple[list[int], list[float]]]]  # metric -> run -> epochs, values
    fields: list[list[list[str]] | None]  # a receptive-field table per run, None where it logged none
    kernels: list[bytes | None]  # a PNG per run


def pictures_folder(output: Path) -> Path:
    return output.with_name(f"{output.stem}_files")


def check_output(output: Path, runs: list[str]) -> None:
    """Before anything is read: a report puts two runs or more side by side, and writes over no file (or
    folder) that is not an earlier report, such as README.md."""
    if output.suffix.lower() not in SUFFIXES:
        raise CnnpipeError(
            f"--output: {output} must end in .html (one file, pictures inside) or .md (PNGs in "
            f"{pictures_folder(output).name}/) for a report; for the table add --format md or --format csv"
        )
    if len(dict.fromkeys(runs)) < 2:
        raise CnnpipeError(
            f"--output: without --format, {output} is a report of named runs side by side: name two or more "
            f"(cnnpipe compare RUN RUN --output {output}), or add --format md or csv for the table"
        )
    if output.is_file() and MARK not in output.read_text(errors="replace"):
        raise CnnpipeError(f"--output: {output} exists and is no cnnpipe compare report; name a new file")
    folder = pictures_folder(output)
    earlier = not folder.exists() or folder.is_dir() and all(path.suffix == ".png" for path in folder.iterdir())
    if output.suffix.lower() == ".md" and not earlier:
        raise CnnpipeError(f"--output: {folder} exists and holds more than a report's PNGs; move it or rename")


def _labels(runs: list[Training]) -> list[str]:
    names = [run.name for run in runs]
    return [f"{run.name} ({run.run_id[:8]})" if names.count(run.name) > 1 else run.name for run in runs]


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    """A metric per step; a step logged twice (a resumed training redid an epoch) keeps its newest value."""
    values = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    steps = sorted(values)
    return steps, [values[step] for step in steps]


def _artifacts(client: MlflowClient, run_id: str, folder: Path) -> tuple[list[list[str]] | None, bytes | None]:
    """The run's receptive-field table and kernels picture, None for what it did not log."""
    logged = {artifact.path for artifact in client.list_artifacts(run_id)}
    folder.mkdir()
    field, kernels = (
        Path(client.download_artifacts(run_id, name, str(folder))) if name in logged else None
        for name in (FIELD_FILE, KERNELS_FILE)
    )
    table = field_tables.rows(field_tables.from_json(field.read_text())) if field else None
    return table, kernels.read_bytes() if kernels else None


def build(tracking_uri: str, experiment: str, runs: list[Training], metrics: tuple[str, ...]) -> Report:
    """The report of `runs` (in that order), with the `metrics` any of them logged."""
    labels = _labels(runs)
    client = MlflowClient(tracking_uri=tracking_uri)
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {key: {} for key in CURVES}
    read = []
    with tempfile.TemporaryDirectory(prefix="cnnpipe-report-") as scratch:
        for label, run in zip(labels, runs, strict=True):
            try:
                for key in CURVES:
                    if (curve := _history(client, run.run_id, key))[0]:
                        curves[key][label] = curve
                read.append(_artifacts(client, run.run_id, Path(scratch) / run.run_id))
            except (MlflowException, OSError, ValueError, KeyError, TypeError) as exc:  # a store or a file broken
                reason = " ".join(str(exc).split())[:200]
                raise CnnpipeError(f"RUN {label!r}: cannot read it back from {tracking_uri}: {reason}") from None
    shown = [key for key in metrics if any(key in run.metrics for run in runs)]
    return Report(
        f"{experiment}: {', '.join(labels)}",
        labels,
        [run.run_id for run in runs],
        [[key, *(run.params.get(key, "") for run in runs)] for key in differing(runs)],
        [[key, *column_format([run.metrics.get(key) for run in runs])] for key in shown],
        curves,
        [table for table, _ in read],
        [kernels for _, kernels in read],
    )


def _pictures(report: Report, folder: Path) -> tuple[dict[str, Path], list[Path | None]]:
    """The overlaid curves, a figure per metric, and each run's kernels, as PNG files in `folder`."""
    curves = {
        key: plots.overlaid_curves(runs, key, folder / f"{key.replace('/', '_')}.png")
        for key, runs in report.curves.items()
        if runs
    }
    kernels = [folder / f"kernels_{number}.png" if data else None for number, data in enumerate(report.kernels, 1)]
    for path, data in zip(kernels, report.kernels, strict=True):
        if path:
            path.write_bytes(data)
    return curves, kernels


STYLE = """
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222 }
table { border-collapse: collapse; margin: 6px 0 }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-variant-numeric: tabular-nums }
th { background: #f2f2f2 }
table.numbers td + td { text-align: right }
.side { display: flex; gap: 24px; align-items: flex-start }
.side > * { flex: 1 1 0; min-width: 0; margin: 0 }
img { max-width: 100% }
h3, figcaption { font-weight: 600; margin: 4px 0 }
"""


def _escape(text: str, quote: bool = True) -> str:
    """HTML of a store's text, its control characters escaped as a terminal shows them: HTML holds none (each is
    a parse error), a bidi override would turn the text after it, and a terminal showing the .md obeys an ESC."""
    return html.escape(printable(text), quote)


def _ids(report: Report) -> str:
    pairs = zip(report.runs, report.ids, strict=True)
    return "MLflow run ids: " + ", ".join(f"{run} {run_id}" for run, run_id in pairs)


def _html_table(headers: list[str], rows: list[list[str]], numbers: bool = False) -> str:
    head = "".join(f"<th>{_escape(cell)}</th>" for cell in headers)
    body = "".join("<tr>" + "".join(f"<td>{_escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    kind = ' class="numbers"' if numbers else ""
    return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html(report: Report, curves: dict[str, Path], kernels: list[Path | None]) -> str:
    def side(items: list[str]) -> str:
        return f'<div class="side">{"".join(items)}</div>'

    def figure(path: Path | None, alt: str, caption: str = "") -> str:
        inside = f'<img src="{_data_uri(path)}" alt="{_escape(alt)}">' if path else "<p>not logged</p>"
        return f"<figure>{caption and f'<figcaption>{_escape(caption)}</figcaption>'}{inside}</figure>"

    rf = [
        f"<section><h3>{_escape(run)}</h3>"
        + (_html_table(list(field_tables.COLUMNS), table) if table else f"<p>no {FIELD_FILE} logged</p>")
        + "</section>"
        for run, table in zip(report.runs, report.fields, strict=True)
    ]
    parts = [
        f'<!doctype html><html><head><meta charset="utf-8"><meta name="generator" content="{MARK}">',
        f"<title>{_escape(report.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_escape(report.title)}</h1>",
        f"<p>{_escape(_ids(report))}</p>",
        "<h2>Params that differ</h2>",
        _html_table(["param", *report.runs], report.params) if report.params else "<p>none: the same params</p>",
        "<h2>Metrics</h2>",
        _html_table(["metric", *report.runs], report.metrics, numbers=True) if report.metrics else "<p>none</p>",
        "<h2>Validation curves</h2>",
        side([figure(path, key) for key, path in curves.items()]) if curves else "<p>no run logged them</p>",
        "<h2>Receptive fields</h2>",
        side(rf),
        "<h2>First-layer kernels</h2>",
        side([figure(path, f"kernels of {run}", run) for run, path in zip(report.runs, kernels, strict=True)]),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _markdown(report: Report, curves: dict[str, Path], kernels: list[Path | None], output: Path) -> str:
    """GitHub Markdown; text escaped as HTML, which Markdown passes through."""

    def text(value: str) -> str:
        return _escape(value, quote=False)

    def link(path: Path, alt: str) -> str:
        return f"![{alt}]({pictures_folder(output).name}/{path.name})"

    def table(headers: list[str], rows: list[list[str]]) -> str:
        return markdown_table([text(cell) for cell in headers], [[text(cell) for cell in row] for row in rows])

    runs = [text(run) for run in report.runs]
    parts = [f"<!-- {MARK} -->", f"# {text(report.title)}", text(_ids(report)), "## Params that differ"]
    parts.append(table(["param", *report.runs], report.params) if report.params else "none: the same params")
    parts += ["## Metrics", table(["metric", *report.runs], report.metrics) if report.metrics else "none"]
    parts += ["## Validation curves", " ".join(link(path, key) for key, path in curves.items()) or "not logged"]
    parts.append("## Receptive fields")
    for run, rows in zip(runs, report.fields, strict=True):
        parts += [f"### {run}", table(list(field_tables.COLUMNS), rows) if rows else f"no {FIELD_FILE} logged"]
    cells = [link(path, "kernels") if path else "not logged" for path in kernels]
    parts += ["## First-layer kernels", markdown_table(runs, [cells])]
    return "\n\n".join(part.rstrip("\n") for part in parts) + "\n"


def write(report: Report, output: Path) -> None:
    """The HTML in one file; the Markdown after its folder of PNGs. Each file and the folder is replaced whole or
    not at all (check_output has made sure that what they replace is an earlier report)."""
    try:
        if output.suffix.lower() == ".html":
            with tempfile.TemporaryDirectory(prefix="cnnpipe-report-") as scratch:
                write_atomically(output, _html(report, *_pictures(report, Path(scratch))))
        else:
            with replaced_atomically(pictures_folder(output)) as staging:
                pictures = _pictures(report, staging)
            write_atomically(output, _markdown(report, *pictures, output))
    except OSError as exc:  # permission denied, a full disk
        raise CnnpipeError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
