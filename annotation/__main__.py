"""`python -m annotation {serve,push,pull,config}`: the experts' side of the pipeline."""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from annotation.client import Connection, LabelStudioError
from annotation.config import labeling_config
from annotation.consolidate import consolidate
from annotation.projects import review_title
from annotation.pull import snapshot_from_server
from annotation.push import Prediction, imported_predictions, push_images, review_items
from annotation.server import ServerError, ServerSettings, check_token, credentials, exit_status, start, stop
from annotation.settings import AnnotationSettings
from annotation.sources import read_labels_at
from common.cli import USER_ERRORS, report_user_errors
from common.settings import DEFAULT_PARAMS, CrawlSettings, load_section, load_setting, load_taxonomy_path
from common.tables import read_table
from common.taxonomy import Taxonomy, load_taxonomy


class CommandError(RuntimeError):
    """A helper command failed; the message says what to run by hand."""


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While in the block, SIGTERM and SIGHUP (`kill`, a closed terminal) interrupt like Ctrl-C.

    The server runs in a session of its own, so these signals reach serve only; their
    default action would end serve at once and leave the server running, orphaned.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    caught = [
        signum for signum in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(signum) is not signal.SIG_IGN
    ]  # nohup: hang-ups stay ignored
    previous = {signum: signal.signal(signum, interrupt) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve(args: argparse.Namespace, settings: AnnotationSettings) -> int:
    server = ServerSettings(
        port=args.port or settings.port, data_dir=settings.data_dir, document_root=settings.document_root
    )
    creds = credentials()
    with stop_signals_interrupt():
        try:
            process = start(server, creds)  # stops the server itself when interrupted while starting
            try:
                check_token(server, creds["LABEL_STUDIO_API_KEY"])
                print(f"Label Studio runs at {server.url} (log: {server.log_path}); Ctrl-C stops it.")
                print(
                    f"Pipeline commands use it with: export LABEL_STUDIO_URL={server.url} LABEL_STUDIO_API_KEY=<your "
                    "token>"
                )
                process.wait()
                raise ServerError(
                    f"Label Studio exited on its own with {exit_status(process)}; its log says why: {server.log_path}"
                )
            finally:
                stop(process)
        except KeyboardInterrupt:
            print("serve: Label Studio stopped", file=sys.stderr)
    return 0


def load_predictions(
    checkpoint: Path, images: pd.DataFrame, crawl_dir: Path, top_k: int, selection: Path | None = None
) -> dict[str, Prediction]:
    """Model guesses for pre-annotation, from the trainer's predict function; an image it cannot read (warned about)
    gets none.

    Sub-styles are pre-ticked by the fewest-clicks rule: the select stage's, fitted out of fold (`selection`, read when
    the model was named with --model), else the checkpoint's own, fitted on the validation split.
    """
    from training.checkpoint import load_checkpoint  # torch is imported only when predictions are asked for
    from training.decisions import decision_rules, read_selection
    from training.predict import predict_checkpoint

    loaded = load_checkpoint(checkpoint)
    rules = decision_rules(checkpoint.parent.name, loaded, read_selection(selection) if selection else None)
    paths = [crawl_dir / p for p in images["path"]]
    rows = predict_checkpoint(loaded, paths, top_k, vetted=True, embeddings=True, rules=rules)
    version = f"{checkpoint.parent.name}@{int(checkpoint.stat().st_mtime)}"
    return {
        image_id: Prediction(version, [tuple(pair) for pair in row["top"]], frozenset(row["pre_ticked"]),
                             list(row["scores"].values()), row["embedding"].tolist())
        for image_id, row in zip(images["image_id"], rows, strict=True) if "error" not in row
    }  # fmt: skip


def imported_labels(
    source: Path, crawl_dir: Path, catalog_path: Path, taxonomy: Taxonomy, cache_dir: Path
) -> dict[str, Prediction]:
    """Pre-annotations from an existing label source (K-Fashion folder, tag CSV, export), consolidated per image.

    K-Fashion files parsed here are cached in `cache_dir` (under annotation.data_dir: the labels stage's own cache is a
    DVC output).
    """
    catalog = read_table(catalog_path, columns=["image_id", "batch", "sources"])
    rows, rejects = read_labels_at(source, crawl_dir, catalog, taxonomy, cache_dir).tables()
    if len(rejects):
        first = rejects.iloc[0]
        print(f"push: {len(rejects)} records of {source} not imported (first: {first['record']}: {first['reason']}); "
              "`dvc repro` lists them all in data/annotation_rejects.csv")  # fmt: skip
    labels, _, _ = consolidate(rows, catalog)
    return imported_predictions(labels, f"import:{source.name}")


def chosen_checkpoint(args: argparse.Namespace) -> Path | None:
    """The checkpoint whose predictions push attaches: --checkpoint, or --model's (a name, or 'best': the select
    stage's choice); None for neither."""
    if args.model is None:
        return args.checkpoint
    from training.predict import model_checkpoint  # torch is imported only when predictions are asked for

    return model_checkpoint(args.model, args.models_dir, args.selection)


def push(args: argparse.Namespace, settings: AnnotationSettings) -> int:
    conn = Connection.from_env()  # before any work: a missing setting fails at once
    crawl_dir = load_setting(CrawlSettings, "crawl", "dir", args.params)
    taxonomy = load_taxonomy(load_taxonomy_path(args.params))
    catalog = read_table(args.catalog, columns=["image_id", "path", "batch"])
    title, suspicions = settings.project, None
    if args.review:
        items = review_items(args.review, args.top)
        catalog = (
            catalog.set_index("image_id").reindex(items["image_id"]).dropna(subset=["path"]).reset_index()
        )  # the list's order: most urgent first
        title = review_title(settings.project)
        suspicions = dict(zip(items["image_id"], items["suspicion"].fillna(""), strict=True))
    if args.batch:
        catalog = catalog[catalog["batch"].isin(args.batch)]
    checkpoint = chosen_checkpoint(args)
    selection = args.selection if args.model else None
    predict = (
        (lambda new: load_predictions(checkpoint, new, crawl_dir, len(taxonomy.names), selection))
        if checkpoint
        else None
    )
    if args.labels:
        imported = imported_labels(args.labels, crawl_dir, args.catalog, taxonomy, settings.data_dir / "labels_cache")

        def predict(new: pd.DataFrame) -> dict[str, Prediction]:
            return {i: imported[i] for i in new["image_id"] if i in imported}

    project_id, added = push_images(
        conn, settings, taxonomy, catalog, crawl_dir, predict, title=title, suspicions=suspicions
    )
    print(f"push: project {title!r} (id {project_id}): {added} new tasks, {len(catalog) - added} already there")
    return 0


def dvc_add(folder: Path) -> None:
    command = ["dvc", "add", "--quiet", str(folder)]
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = (
            f"exit status {exc.returncode}, dvc's message is above"
            if isinstance(exc, subprocess.CalledProcessError)
            else str(exc)
        )
        raise CommandError(
            f"`{shlex.join(command)}` failed ({reason}); the snapshot is written but not tracked: fix the cause "
            f"(dvc not installed in this environment? not run from the DVC repository?) and run `dvc add {folder}` by "
            "hand"
        ) from None


def pull(args: argparse.Namespace, settings: AnnotationSettings) -> int:
    exports_dir = load_setting(CrawlSettings, "crawl", "label_exports", args.params)
    snapshots = snapshot_from_server(Connection.from_env(), settings.project, exports_dir)
    for path, changed in snapshots:
        print(f"pull: {'new labels in' if changed else 'no change to'} {path}")
    if any(changed for _, changed in snapshots) and not args.no_dvc_add:
        dvc_add(exports_dir)
        print(f"pull: tracked {exports_dir} with DVC; `dvc repro` now re-runs the stages that use labels")
    return 0


def show_config(args: argparse.Namespace, settings: AnnotationSettings) -> int:
    print(labeling_config(load_taxonomy(load_taxonomy_path(args.params))), end="")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m annotation",
        description="Expert labelling through Label Studio. A day: `serve` (or use your team's server: set "
        "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY), `push` new crawl images, experts label, `pull` the labels, `dvc "
        "repro`.",
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (sections annotation, crawl, taxonomy)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="start a local Label Studio (installed into .venv-labelstudio on first use); "
                       "needs LABEL_STUDIO_USERNAME, LABEL_STUDIO_PASSWORD, LABEL_STUDIO_API_KEY")  # fmt: skip
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: annotation.port)")
    p.set_defaults(run=serve)
    add_push_arguments(
        sub.add_parser(
            "push",
            help="create/update the project and import catalog images not yet in it (server: LABEL_STUDIO_URL, "
            "LABEL_STUDIO_API_KEY)",
        )
    )
    p = sub.add_parser(
        "pull",
        help="snapshot the project's (and its review project's) annotations into the label exports folder and `dvc "
        "add` it (server: LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)",
    )
    p.add_argument("--no-dvc-add", action="store_true", help="write the snapshot only")
    p.set_defaults(run=pull)
    p = sub.add_parser("config", help="print the labeling config generated from the taxonomy")
    p.set_defaults(run=show_config)
    return parser.parse_args(argv)


def add_push_arguments(p: argparse.ArgumentParser) -> None:
    """push's options: which images, with which pre-annotations, into which project."""
    p.add_argument(
        "--catalog", type=Path, default=Path("data/catalog.parquet"), help="image catalog from the ingest stage"
    )
    p.add_argument("--batch", action="append", help="only images first seen in this crawl batch (repeatable)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--checkpoint",
        type=Path,
        help="trained model: attach its predictions and queue the photos by annotation.order (most uncertain, spread "
        "over looks)",
    )
    which.add_argument(
        "--labels",
        type=Path,
        help="existing labels as pre-annotations (model version 'import:<name>'), for experts to "
        "review rather than label from scratch: a K-Fashion folder, an image,tags CSV, a Label Studio export, or a "
        "crawl batch with K-Fashion files beside its photos; combine with --review to fill the review project",
    )
    which.add_argument(
        "--model",
        help="the same with a model of params.yaml by name (MODELS_DIR/<name>/best.pt), or 'best': the select "
        "stage's choice; sub-styles pre-ticked by its fewest-clicks thresholds, fitted out of fold",
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where --model looks (default: models)")
    p.add_argument(
        "--selection",
        type=Path,
        default=Path("data/selection.json"),
        help="the select stage's choice and thresholds, read with --model (default: data/selection.json)",
    )
    p.add_argument(
        "--review",
        type=Path,
        help="push the images of a review list to the '<project> (review)' project, with why in a 'suspicion' column: "
        "data/review.csv (ties) or data/label_issues.parquet (likely label errors, most suspicious first)",
    )
    p.add_argument(
        "--top",
        type=int,
        default=50,
        help="with --review data/label_issues.parquet: how many of the most suspicious images (default 50)",
    )
    p.set_defaults(run=push)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors(
        f"annotation {args.command}",
        lambda: args.run(args, load_section(AnnotationSettings, "annotation", args.params)),
        errors=(LabelStudioError, CommandError, ServerError, *USER_ERRORS),
    )


if __name__ == "__main__":
    sys.exit(main())
