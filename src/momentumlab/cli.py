"""The `momentumlab` command: run, sweep, compare, reproduce, ls, show, plot, store check/repair, data fetch.

Every command turns the project's own errors into one line on stderr: invalid input (a config, an
option, a path) exits 2, a run that cannot be found or is busy, a failed write or a missing dataset
exits 1. Any other exception is a bug: its traceback is shown with a line asking for a report.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from momentumlab.atomic import WriteError
from momentumlab.config import INT_LIMIT, ConfigError, PathError
from momentumlab.data.images import DatasetError
from momentumlab.store import RunStore, RunStoreError, usable_folder

app = typer.Typer(
    help="Reproduce and measure what momentum changes in what a network learns.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

StoreOption = Annotated[
    Path | None, typer.Option("--store", help="Run store folder (default: $MOMENTUMLAB_STORE or ./runs).")
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Dataset folder (default: $MOMENTUMLAB_DATA).")
]


class Scale(str, Enum):
    full = "full"
    smoke = "smoke"


PER_NEURON = re.compile(r"_r\d+$")  # per-filter columns, left to `show`
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


BUG_REPORT = (
    "momentumlab hit an unexpected error: this is a bug; please report it to the maintainers with the "
    "command you ran and the traceback above"
)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _reported(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run `command`, turning the project's errors into `error: ...` and an exit code (2: bad input,
    1: the rest); anything else keeps its traceback and asks for a bug report."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            _fail(str(error), 2)
        except (RunStoreError, WriteError, DatasetError) as error:
            _fail(str(error), 1)
        except (typer.Exit, typer.Abort):  # the command line's own way out
            raise
        except BrokenPipeError:  # the reader went away (`| head`): nothing more to say to it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except Exception:  # noqa: BLE001 - a bug: shown in full, with where to report it
            traceback.print_exc()
            typer.echo(BUG_REPORT, err=True)
            raise typer.Exit(1) from None

    return wrapper


def _writable_folder(path: Path, option: str) -> None:
    """Refuse a folder option that cannot become a writable folder (a file on its way, no permission),
    naming the option, the path and the problem; creates nothing."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PathError(
            f"{option} {path}: {existing} is a file, not a folder; allowed: a folder (or a path to create)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathError(f"{option} {path}: {existing} is not writable; allowed: a folder this user can write")


def _use_data_dir(data_dir: Path | None) -> None:
    """Datasets are read from $MOMENTUMLAB_DATA, which worker processes inherit; --data-dir sets it."""
    from momentumlab.data.images import DATA_DIR_VARIABLE

    if data_dir is not None:
        os.environ[DATA_DIR_VARIABLE] = str(data_dir)


def _format(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command()
@_reported
def run(
    config: Annotated[Path, typer.Argument(help="YAML or TOML run config.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted key=value overrides.")] = None,
    store: StoreOption = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun even if the run is complete.")] = False,
    data_dir: DataDirOption = None,
    progress: ProgressOption = True,
) -> None:
    """Train one run of any registered kind (the config's `kind`), or return it from the store, and print
    its final measurements."""
    from momentumlab.runs import load_run_config

    _use_data_dir(data_dir)
    run_config = load_run_config(config, overrides or [])
    stored = RunStore(store, progress=progress).run(run_config, force=force)
    typer.echo(f"run {stored.run_id} ({stored.config.kind}): {stored.status} ({stored.folder})")
    if stored.diverged_at_step is not None:
        typer.echo(f"  {stored.message}")
    for key, value in stored.final().items():
        if not PER_NEURON.search(key):
            typer.echo(f"  {key:28s} {_format(value)}")


class Backend(str, Enum):
    local = "local"
    ray = "ray"


@app.command()
@_reported
def sweep(
    spec: Annotated[Path, typer.Argument(help="YAML or TOML sweep file (grid over dotted fields, seeds).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the result table (default: sweeps/<file name>).")
    ] = None,
    store: StoreOption = None,
    backend: Annotated[
        Backend, typer.Option("--backend", help="local processes or a Ray cluster.")
    ] = Backend.local,
    workers: Annotated[int, typer.Option("--workers", help="Local worker processes.")] = 1,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (default: start a local Ray).")
    ] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most runs trained in one computation.")] = 64,
    data_dir: DataDirOption = None,
    progress: ProgressOption = True,
) -> None:
    """Run every point of a sweep (reusing finished runs) and save a table, one row per run.

    Points another process is training are skipped and listed as `busy` (rerun the sweep later)."""
    from momentumlab.sweep import (
        check_reachable,
        execute,
        expand,
        load_sweep,
        result_table,
        summary,
        write_result,
    )

    _use_data_dir(data_dir)
    if workers < 1:
        _fail(f"--workers = {workers}: allowed: ≥ 1", 2)
    if max_batch < 1:
        _fail(f"--max-batch = {max_batch}: allowed: ≥ 1", 2)
    if backend == Backend.ray and address not in (None, "auto"):
        check_reachable(address)  # Ray itself retries an address nothing answers at forever
    sweep_spec, base = load_sweep(spec)
    configs = expand(sweep_spec, base)
    folder = out if out is not None else Path("sweeps") / spec.stem
    run_store = RunStore(store, progress=progress)
    usable_folder(folder, "--out")  # before training: a result that cannot be written is refused at once
    outcome = execute(
        configs,
        run_store,
        backend=backend.value,
        workers=workers,
        address=address,
        max_batch=max_batch,
        echo=typer.echo,
    )
    table = result_table(configs, run_store)
    write_result(table, sweep_spec, folder)
    typer.echo(summary(table).to_string(index=False))
    typer.echo(f"table: {folder / 'results.csv'} ({len(table)} runs)")
    for failure in outcome.failures:
        typer.echo(f"error: a batch failed ({failure})", err=True)
    if outcome.busy:
        typer.echo(
            f"error: {len(outcome.busy)} runs are busy (another process trains them): "
            f"{', '.join(outcome.busy[:5])}{' ...' if len(outcome.busy) > 5 else ''}; rerun the sweep later",
            err=True,
        )
    if outcome.failures or outcome.busy:
        raise typer.Exit(1)


@app.command()
@_reported
def compare(
    result: Annotated[Path, typer.Argument(help="A sweep's output folder (or its results.csv/.parquet).")],
    metric: Annotated[
        str, typer.Option("--metric", help="Validation metric that picks each optimizer's setting.")
    ] = "val_accuracy",
    maximize: Annotated[
        bool | None,
        typer.Option(
            "--maximize/--minimize",
            help="Whether a higher metric is better (known for *accuracy* and *loss*/*error* metrics).",
            show_default=False,
        ),
    ] = None,
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by",
            help="Field that splits the runs into one table each (repeatable; default: "
            "every varied field that is not the optimizer's).",
        ),
    ] = None,
) -> None:
    """Each optimizer at its best setting on validation data, one table per setting of the other varied
    fields (data, model, ...); test metrics as mean ± std over seeds."""
    from momentumlab import atomic
    from momentumlab.compare import compare as compare_optimizers
    from momentumlab.compare import to_markdown
    from momentumlab.sweep import load_result

    comparison = compare_optimizers(load_result(result), metric, maximize=maximize, by=by)
    markdown = to_markdown(comparison)
    folder = result if result.is_dir() else result.parent
    atomic.write_text(folder / "compare.md", markdown + "\n")
    atomic.write_text(folder / "compare.csv", comparison.to_csv(index=False))
    typer.echo(markdown)


@app.command()
@_reported
def reproduce(
    names: Annotated[
        list[str] | None, typer.Argument(help="Reproductions to run (default: all CPU-sized).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for figures, claims and report.")] = Path(
        "results"
    ),
    store: StoreOption = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2.")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value override of the reproduction's settings (repeatable)."),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any claim fails.")] = False,
    scale: Annotated[
        Scale, typer.Option("--scale", help="full: the paper's setting; smoke: a tiny subset, a few epochs.")
    ] = Scale.full,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute the measurement even if the store holds it.")
    ] = False,
    data_dir: DataDirOption = None,
    progress: ProgressOption = True,
) -> None:
    """Run reproductions and write figures, claims.json and one report.md."""
    from momentumlab.experiments import select
    from momentumlab.experiments.runner import ReproductionOptions
    from momentumlab.experiments.runner import reproduce as run_reproductions

    try:
        seed_list = tuple(int(s) for s in seeds.split(",")) if seeds else None
    except ValueError:
        _fail(f"--seeds = {seeds!r}: expected comma-separated non-negative integers", 2)
    if seed_list is not None and any(not 0 <= seed < INT_LIMIT for seed in seed_list):
        _fail(f"--seeds = {seeds!r}: allowed: integers in 0..2**63-1", 2)
    _use_data_dir(data_dir)
    options = ReproductionOptions(
        seeds=seed_list, overrides=tuple(overrides or ()), scale=scale.value, force=force
    )
    selected = select(names or [])
    _writable_folder(out, "--out")
    reports = run_reproductions(selected, RunStore(store, progress=progress), out, options)
    failed = 0
    for report in reports:
        typer.echo(f"{report.name}:")
        for claim in report.claims:
            mark = {"passed": "PASS", "failed": "FAIL", "not resolved": "OPEN"}[claim.verdict]
            interval = (
                "" if claim.interval is None else f" in [{claim.interval[0]:.4g}, {claim.interval[1]:.4g}]"
            )
            typer.echo(
                f"  [{mark}] {claim.statement}: {claim.measured:.4g}{interval} "
                f"({claim.comparison} {claim.threshold:.4g})"
            )
            failed += not claim.passed
    typer.echo(f"report: {out / 'report.md'}")
    if strict and failed:
        raise typer.Exit(1)


data_app = typer.Typer(help="Datasets that must be downloaded (loaded from a local folder at run time).")
app.add_typer(data_app, name="data")


@data_app.command("fetch")
@_reported
def fetch(
    name: Annotated[str, typer.Argument(help="cifar10 or cifar100.")],
    directory: Annotated[Path, typer.Option("--dir", help="Folder to download and extract into.")],
    progress: ProgressOption = True,
) -> None:
    """Download an official archive (resumable), verify its checksum and extract it atomically."""
    from momentumlab.data.fetch import DATASETS, fetch_dataset

    if name not in DATASETS:
        _fail(f"dataset {name!r} is not downloadable; allowed: {', '.join(DATASETS)}", 2)
    _writable_folder(directory, "--dir")
    folder = fetch_dataset(name, directory, progress=progress)
    typer.echo(f"{name}: {folder}")


@app.command("ls")
@_reported
def list_runs(store: StoreOption = None) -> None:
    """List the runs in the store, newest first (a corrupt run with the reason)."""
    rows = RunStore(store).list()
    if not rows:
        typer.echo("no runs")
        return
    typer.echo(f"{'run':16s}  {'kind':16s}  {'status':11s}  {'seed':>4s}  {'updated':24s}  optimizer")
    for row in rows:
        about = _optimizer(json.loads(row["config"])) if row["config"] else ""
        if row["status"] == "corrupt":
            about = f"corrupt: {row['reason']}"
        typer.echo(
            f"{row['run_id']:16s}  {row['kind'] or '?':16s}  {row['status']:11s}  {_format(row['seed']):>4s}  "
            f"{row['updated']:24s}  {about}"
        )


def _optimizer(config: dict) -> str:
    """The run's optimizer in a few words, when its config has an `optimizer` section."""
    optimizer = config.get("optimizer")
    if not isinstance(optimizer, dict):
        return ""
    return " ".join(f"{key}={_format(value)}" for key, value in optimizer.items())


@app.command()
@_reported
def show(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it.")],
    store: StoreOption = None,
) -> None:
    """Print a run's config, status, environment and final measurements (a corrupt run: the reason)."""
    stored = RunStore(store).get(run_id)
    typer.echo(f"run {stored.run_id} in {stored.folder}")
    status = {
        "status": stored.status,
        "step": stored.diverged_at_step,
        "message": stored.message,
        "seconds": stored.seconds,
        "resumed_from_step": stored.resumed_from_step,
        "extra": stored.extra,
    }
    typer.echo("status: " + json.dumps(status))
    if stored.config is not None:
        typer.echo("config: " + stored.config.model_dump_json(indent=2))
    try:
        typer.echo("environment: " + json.dumps(stored.environment(), indent=2))
    except (OSError, ValueError):
        typer.echo("environment: (missing or unreadable)")
    if stored.finished:
        typer.echo("final:")
        for key, value in stored.final().items():
            typer.echo(f"  {key:28s} {_format(value)}")


store_app = typer.Typer(help="Check the run store, and repair what can be repaired.")
app.add_typer(store_app, name="store")


@store_app.command("check")
@_reported
def store_check(store: StoreOption = None) -> None:
    """Report what is wrong in the store (corrupt runs, index rows that disagree with the folders, stale
    locks, temporary files) without changing anything; exit 1 if anything is."""
    problems = RunStore(store, reconcile=False).check()
    for problem in problems:
        typer.echo(problem)
    typer.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}")
    if problems:
        raise typer.Exit(1)


@store_app.command("repair")
@_reported
def store_repair(store: StoreOption = None) -> None:
    """Mark unverifiable runs corrupt (they retrain), clear stale locks, remove temporary files and
    rebuild the index from the run folders."""
    for action in RunStore(store, reconcile=False).repair():
        typer.echo(action)


@app.command()
@_reported
def plot(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Run ids (or unique prefixes) and sweep results (a sweep's output folder or its "
            "results.csv/.parquet); default: every run in the store."
        ),
    ] = None,
    columns: Annotated[
        list[str] | None,
        typer.Option("--column", "-c", help="Logged column to draw (repeatable; default: train_loss)."),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            "-g",
            help="Config field (dotted) whose values make the curves (repeatable; default: every field "
            "the runs differ in except the seed). Runs in a group are averaged, with a min–max band.",
        ),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="field=value: keep only the runs with this config value (repeatable)."),
    ] = None,
    heatmap: Annotated[
        str | None,
        typer.Option(
            "--heatmap",
            help="X,Y: instead of curves, a heat map of the final value of the --column over two config "
            "fields, the mean over each cell's runs (seeds).",
        ),
    ] = None,
    x: Annotated[str, typer.Option("--x", help="The logged column of the curves' x axis.")] = "step",
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic y axis for curves.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Figure file: .png, .pdf or .svg.")] = Path("plot.png"),
    store: StoreOption = None,
) -> None:
    """Figures of stored runs or sweep results: curves of logged columns over steps grouped by config
    fields, or a heat map of a final value over two swept fields (mean over seeds)."""
    from momentumlab import plots

    columns = columns or ["train_loss"]
    fields = tuple(field.strip() for field in heatmap.split(",")) if heatmap is not None else ()
    plots.check_figure_path(out)
    if heatmap is not None and (len(fields) != 2 or len(columns) != 1):
        raise ConfigError(
            f"--heatmap {heatmap!r} with --column {', '.join(columns)}: give two fields as X,Y and one column"
        )
    run_store = RunStore(store)
    table, left_out = plots.run_table(sources or [], run_store)
    table = plots.select(table, where or [])
    if heatmap is not None:
        drawn = plots.plot_heatmap(table, columns[0], fields, out)
        summary = drawn.pivot(index=fields[1], columns=fields[0], values="mean")
    else:
        drawn = plots.plot_curves(table, run_store, columns, out, group=group, x=x, log_y=log_y)
        last = drawn.groupby(["column", "label"], sort=False).tail(1)
        summary = last[["column", "label", x, "mean", "low", "high", "runs"]].set_index(["column", "label"])
    if left_out:
        typer.echo(f"left out (no results): {', '.join(left_out)}", err=True)
    mixed = plots.averaged_fields(table, group) if heatmap is None else []
    if mixed:
        typer.echo(f"note: each curve averages over {', '.join(mixed)}")
    typer.echo(summary.to_string(float_format=lambda value: f"{value:.6g}"))
    typer.echo(f"figure: {out} ({len(table)} runs)")


def main() -> None:
    """The console entry point."""
    app(prog_name="momentumlab")
