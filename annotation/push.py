"""Push catalog images to Label Studio as tasks, idempotently.

The project is found by title (created when missing, its labeling config kept in
step with the taxonomy), a local-files storage covering the crawl is connected,
and only catalog images whose id is not yet in the project become tasks, in
chunks. With model predictions (made for those new images only), each task carries
a pre-annotation (model version, score) and tasks are imported in the labelling order
of `annotation.order` (training/labelling_order.py; default entropy_diverse: the most uncertain
images, thinned so that one round of `annotation.round_size` does not hold near-copies),
which is the order experts see them in under Label Studio's sequential sampling.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import numpy as np
import pandas as pd
from label_studio_sdk import LabelStudio, RoleBasedTask
from label_studio_sdk.core.api_error import ApiError
from tqdm import tqdm

from annotation.client import Connection, LabelStudioError
from annotation.config import labeling_config
from annotation.importers import MAIN_FIELD, SUB_FIELD
from annotation.projects import find_projects, server_id
from annotation.settings import AnnotationSettings
from common.tables import read_table
from common.taxonomy import Taxonomy
from training.labelling_order import labelling_queue

T = TypeVar("T")


@dataclass(frozen=True)
class Prediction:
    """A model's guess for one image: (label, probability) pairs, most likely first, and the sub-styles to pre-tick.

    The most likely label is pre-selected as the main style (where the taxonomy has one);
    `ticked`: the labels at or above their fewest-clicks thresholds (training/clicks.py), which
    the pre-annotation ticks as sub-styles (never the pre-selected main style).
    """

    model_version: str
    ranked: Sequence[tuple[str, float]]
    ticked: frozenset[str] = frozenset()
    scores: Sequence[float] = ()  # every label's probability, in class order (the labelling order reads them)
    embedding: Sequence[float] = ()  # the image's pooled backbone features (how alike images look, for a diverse order)
    main_known: bool = True  # False for an imported tag set without a main label: nothing to pre-select as main

    @property
    def confidence(self) -> float:
        return float(self.ranked[0][1]) if self.ranked else 0.0

    def as_label_studio(self) -> dict:
        mains = [label for label, _ in self.ranked[:1]] if self.main_known else []
        result = [_choices(MAIN_FIELD, mains)] if mains else []
        subs = [label for label, _ in self.ranked[len(mains) :] if label in self.ticked]
        if subs:
            result.append(_choices(SUB_FIELD, subs))
        return {"model_version": self.model_version, "score": round(self.confidence, 4), "result": result}


def _choices(from_name: str, values: list[str]) -> dict:
    return {"from_name": from_name, "to_name": "image", "type": "choices", "value": {"choices": values}}


def imported_predictions(labels: pd.DataFrame, version: str) -> dict[str, Prediction]:
    """Pre-annotations from imported labels (consolidated, one row per image): experts review them rather than label
    from scratch.

    The model version `version` ("import:<source>") tells them apart from a model's guesses in Label Studio.
    """
    return {
        image_id: Prediction(
            version,
            [(main, 1.0)] * isinstance(main, str) + [(s, 1.0) for s in subs],
            frozenset(subs),
            main_known=isinstance(main, str),
        )
        for image_id, main, subs in zip(
            labels["image_id"], labels["main_style"].astype(object), labels["sub_styles"], strict=True
        )
        if isinstance(main, str) or len(subs)
    }


def review_items(path: Path, top: int) -> pd.DataFrame:
    """(image_id, suspicion) of the images a review list names, most urgent first.

    A review list is consolidate's `review.csv` (ties, with their reason) or the
    label_issues stage's `label_issues.parquet`: there the `top` most suspicious images,
    each with every suspicion about it ("missing Sexy (model 0.93)").
    """
    if path.suffix == ".parquet":
        issues = read_table(path, columns=["rank", "image_id", "label", "kind", "model_probability"]).sort_values(
            "rank"
        )
        notes = issues.groupby("image_id", sort=False).apply(
            lambda g: "; ".join(
                f"{kind} {label} (model {p:.2f})"
                for kind, label, p in zip(g["kind"], g["label"], g["model_probability"], strict=True)
            ),
            include_groups=False,
        )
        return notes.head(top).rename("suspicion").reset_index()
    review = pd.read_csv(path, dtype="string")
    return review.assign(suspicion=review["reason"] if "reason" in review else pd.NA)[["image_id", "suspicion"]]


def ensure_project(conn: Connection, ls: LabelStudio, title: str, config: str) -> int:
    """Id of the project called `title`; created if missing, its labeling config updated if stale."""
    [project] = find_projects(conn, ls, title)
    if project is not None:
        project_id = server_id(project)
        if (project.label_config or "").strip() != config.strip():
            conn.call("update labeling config", lambda: ls.projects.update(project_id, label_config=config))
        return project_id
    created = conn.call(
        "create project", lambda: ls.projects.create(title=title, label_config=config, sampling="Sequential sampling")
    )
    return server_id(created)


def ensure_local_storage(conn: Connection, ls: LabelStudio, project_id: int, crawl_dir: Path) -> None:
    """Connect (never sync) a local-files storage so Label Studio may serve the crawl's files."""
    path = str(crawl_dir.resolve())
    storages = conn.call("list storages", lambda: ls.import_storage.local.list(project=project_id))
    if not any(s.path == path for s in storages):
        conn.call(
            "connect local storage",
            lambda: ls.import_storage.local.create(project=project_id, path=path, title="crawl", use_blob_urls=True),
        )


def listed_images(ls: LabelStudio, project_id: int) -> list[tuple[int, str]]:
    """(task id, image id) of every task of the project that push made; one page of task objects in memory at a time."""
    tasks: Iterable[RoleBasedTask] = ls.tasks.list(project=project_id, fields="task_only")  # data, no annotations
    return [(server_id(task), str(task.data["image_id"])) for task in tasks if task.data and task.data.get("image_id")]


def crawl_url_prefix(crawl_dir: Path, document_root: Path) -> str:
    """The crawl's path under Label Studio's local-files root, as task URLs spell it."""
    crawl, root = crawl_dir.resolve(), document_root.resolve()
    if not crawl.is_relative_to(root):
        raise LabelStudioError(
            f"crawl.dir {crawl} is not under annotation.document_root {root}, the only folder Label Studio serves "
            "files from: in params.yaml, set annotation.document_root to a folder that holds crawl.dir (and restart "
            "`serve`), or move the crawl under it"
        )
    return crawl.relative_to(root).as_posix()


def task_for(
    image_id: str, path: str, url_prefix: str, prediction: Prediction | None, suspicion: str | None = None
) -> dict:
    """A Label Studio task; `suspicion` (why a review task was sent: a tie, a likely label error) becomes a data field,
    a column of the Data Manager."""
    task: dict = {"data": {"image": f"/data/local-files/?d={quote(url_prefix + '/' + path)}", "image_id": image_id}}
    if suspicion:
        task["data"]["suspicion"] = suspicion
    if prediction is not None:
        task["predictions"] = [prediction.as_label_studio()]
    return task


def in_labelling_order(
    images: pd.DataFrame, predictions: Mapping[str, Prediction], settings: AnnotationSettings
) -> pd.DataFrame:
    """`images` in the order experts should label them (`annotation.order`); images without a prediction (unreadable)
    last."""
    guessed = images[images["image_id"].isin(predictions)]
    if guessed.empty:
        return images
    rows = [predictions[i] for i in guessed["image_id"]]
    probs = np.array([p.scores if len(p.scores) else [p.confidence] for p in rows], dtype=np.float64)
    features = np.array([p.embedding if len(p.embedding) else [0.0] for p in rows], dtype=np.float64)
    queue = labelling_queue(settings.order, probs, features, settings.round_size)
    return pd.concat([guessed.iloc[queue], images[~images["image_id"].isin(predictions)]])


def chunked(items: list[dict], size: int) -> Iterable[list[dict]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def import_chunk(conn: Connection, ls: LabelStudio, project_id: int, chunk: list[dict]) -> bool:
    """Import `chunk`, never sending an image the project already lists; returns whether it retried.

    The import POST is not idempotent: when Label Studio saved the tasks but its answer
    was lost (a read timeout, a 5xx from a proxy), sending the chunk again would
    duplicate them. So the SDK does not retry it, and each retry of ours re-lists
    the project and sends only the chunk's images still missing. A server still
    saving the lost attempt when the retry lists may yet create a second copy, which
    `remove_duplicate_tasks` deletes.
    """
    attempts = 0

    def send_missing() -> None:
        nonlocal attempts
        pending = chunk
        if attempts:
            present = {image_id for _, image_id in listed_images(ls, project_id)}
            pending = [task for task in chunk if task["data"]["image_id"] not in present]
        attempts += 1
        if pending:
            # The SDK serialises task dicts as they are; its type names only its own model class.
            ls.projects.import_tasks(project_id, request=pending, request_options={"max_retries": 0})  # type: ignore[arg-type]

    conn.call(f"import {len(chunk)} tasks", send_missing)
    return attempts > 1


def untouched(task) -> bool:
    """No one has started on `task`, as `tasks.get` reports it: no annotation, skip, draft, comment or annotator.

    `draft_exists` covers every user's autosaved work in progress (`drafts` lists only the
    caller's own). A field the server did not send counts as work.
    """
    return (task.total_annotations == 0 and task.cancelled_annotations == 0 and task.draft_exists is False
            and task.comment_count == 0 and task.annotators == [])  # fmt: skip


def unless_gone(call: Callable[[], T]) -> T | None:
    """`call()` on one task, or None when Label Studio answers 404: the task is gone already
    (deleted in the UI, by another push, or by a retry of ours whose first answer was lost)."""
    try:
        return call()
    except ApiError as exc:
        if exc.status_code != 404:
            raise
        return None


def remove_duplicate_tasks(conn: Connection, ls: LabelStudio, listed: list[tuple[int, str]]) -> int:
    """Delete the extra tasks of images that `listed` (task id, image id) holds more than once; returns how many.

    Only push sets `image_id`, so two tasks of one image are a copy that Label Studio saved
    late for a retried import (see `import_chunk`). Every copy is read again, then those no
    one has started on are deleted, except the oldest when no copy has been started on.
    """
    copies: dict[str, list[int]] = defaultdict(list)
    for task_id, image_id in listed:
        copies[image_id].append(task_id)

    def read(task_id: int) -> RoleBasedTask | None:
        return conn.call(f"read task {task_id}", lambda: unless_gone(lambda: ls.tasks.get(str(task_id))))

    def delete(task_id: int) -> None:
        conn.call(f"delete duplicate task {task_id}", lambda: unless_gone(lambda: ls.tasks.delete(str(task_id))))

    removed = 0
    for same in (sorted(ids) for ids in copies.values() if len(ids) > 1):
        present = [(task_id, task) for task_id, task in ((i, read(i)) for i in same) if task is not None]
        fresh = [task_id for task_id, task in present if untouched(task)]
        started = len(fresh) < len(present)
        for task_id in fresh[0 if started else 1 :]:
            delete(task_id)
            removed += 1
    return removed


def push_images(
    conn: Connection,
    settings: AnnotationSettings,
    taxonomy: Taxonomy,
    images: pd.DataFrame,
    crawl_dir: Path,
    predict: Callable[[pd.DataFrame], Mapping[str, Prediction]] | None = None,
    title: str | None = None,
    suspicions: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """Import `images` (image_id, path) not yet in the project, in their order; returns (project id, tasks added).

    `predict` gets only those new images, so a small batch on top of a long history
    costs a small batch of model predictions. `suspicions`: per image, why it is sent for review.
    """
    prefix = crawl_url_prefix(crawl_dir, settings.document_root)
    ls = conn.client()
    project_id = ensure_project(conn, ls, title or settings.project, labeling_config(taxonomy))
    ensure_local_storage(conn, ls, project_id, crawl_dir)
    listed = conn.call("list tasks", lambda: listed_images(ls, project_id))
    removed = remove_duplicate_tasks(
        conn, ls, listed
    )  # what an earlier push left: it failed, or a late save came after its check
    new = images[~images["image_id"].isin({image_id for _, image_id in listed})]
    predictions = predict(new) if predict is not None and len(new) else {}
    if predictions:  # sequential sampling serves tasks in import order
        new = in_labelling_order(new, predictions, settings)
    tasks = [
        task_for(i, p, prefix, predictions.get(i), (suspicions or {}).get(i))
        for i, p in zip(new["image_id"], new["path"], strict=True)
    ]
    retried = False
    for chunk in tqdm(list(chunked(tasks, settings.chunk_size)), desc="push", unit="chunk", disable=None):
        retried |= import_chunk(conn, ls, project_id, chunk)
    if retried:
        removed += remove_duplicate_tasks(conn, ls, conn.call("list tasks", lambda: listed_images(ls, project_id)))
    if removed:
        tqdm.write(f"push: deleted {removed} duplicate tasks (copies Label Studio saved late for a retried import)")
    return project_id, len(tasks)
