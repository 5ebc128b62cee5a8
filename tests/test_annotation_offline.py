"""Annotation pieces that need no server (or a fake one): labeling config, retries, push, pull, consolidation, serve."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import free_port
from label_studio_sdk.core.api_error import ApiError

from annotation.__main__ import chosen_checkpoint, load_predictions, parse_args, stop_signals_interrupt
from annotation.__main__ import main as annotation_main
from annotation.client import Connection, LabelStudioError
from annotation.config import labeling_config
from annotation.consolidate import IMAGE_LABEL_COLUMNS, consolidate
from annotation.consolidate import main as consolidate_main
from annotation.importers import ANNOTATION_COLUMNS
from annotation.projects import find_projects
from annotation.pull import snapshot_from_server
from annotation.push import Prediction, listed_images, push_images, remove_duplicate_tasks, review_items, unless_gone
from annotation.server import ServerError, ServerSettings, credentials, start
from annotation.settings import AnnotationSettings
from common.taxonomy import load_taxonomy

ROOT = Path(__file__).parents[1]


def test_labeling_config_follows_the_taxonomy(tmp_path):
    taxonomy = load_taxonomy(ROOT / "taxonomies/kfashion_styles.yaml")
    view = ElementTree.fromstring(labeling_config(taxonomy))
    blocks = {c.get("name"): c for c in view.iter("Choices")}
    assert blocks["main_style"].get("choice") == "single-radio" and blocks["main_style"].get("required") == "true"
    assert blocks["sub_styles"].get("choice") == "multiple"
    assert [c.get("value") for c in blocks["main_style"]] == taxonomy.names
    (tmp_path / "t.yaml").write_text('labels:\n  - {id: a, name: "A & B", words: [a]}\n')
    assert [
        c.get("value")
        for c in ElementTree.fromstring(labeling_config(load_taxonomy(tmp_path / "t.yaml"))).iter("Choice")
    ] == ["A & B"] * 2


@pytest.mark.slow
def test_server_down_fails_after_retries_with_what_to_check():
    closed = Connection(url="http://127.0.0.1:9", token="x", attempts=2, backoff_s=0.01)
    with pytest.raises(
        LabelStudioError,
        match=r"cannot reach Label Studio at http://127.0.0.1:9 after 2 attempts.*python -m annotation serve",
    ):
        closed.call("list projects", lambda: list(closed.client().projects.list()))


def test_missing_configuration_says_which_variables(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    with pytest.raises(LabelStudioError, match="set LABEL_STUDIO_URL"):
        Connection.from_env()


def annotations(rows: list[tuple[str, str | None, list[str]]]) -> pd.DataFrame:
    """An annotations table as the labels stage writes it; row n is expert n's."""
    return pd.DataFrame(
        [
            {
                "image_id": i,
                "annotator": str(n),
                "main_style": m,
                "sub_styles": s,
                "cancelled": False,
                "source": "export.json",
                "record": f"annotation {n}",
            }
            for n, (i, m, s) in enumerate(rows)
        ],
        columns=list(ANNOTATION_COLUMNS),
    ).astype(ANNOTATION_COLUMNS)


def test_consolidation_majority_main_half_vote_subs_and_ties_for_review():
    table = annotations([
        # main 2:1; Elegant named by 2/3
        ("a", "Romantic", ["Elegant"]), ("a", "Romantic", ["Sexy"]), ("a", "Elegant", []),
        ("b", "Casual", ["Sporty"]), ("b", "Natural", ["Sporty"]),                           # tie -> review
        ("c", "Sexy", []),                                                                    # one expert
    ])  # fmt: skip
    catalog = pd.DataFrame({"image_id": ["a", "b", "c"], "batch": ["b1", "b1", "b2"]})
    labels, review, agreement = consolidate(table, catalog)
    by_id = labels.set_index("image_id")
    assert by_id.loc["a", "main_style"] == "Romantic" and by_id.loc["a", "sub_styles"] == ["Elegant"]
    assert by_id.loc["a", "main_agreement"] == pytest.approx(2 / 3)
    assert pd.isna(by_id.loc["b", "main_style"]) and by_id.loc["b", "needs_review"]
    assert by_id.loc["b", "sub_styles"] == [
        "Sporty"
    ]  # named by half; Casual and Natural wait for the review to pick the main
    assert by_id.loc["c", "main_style"] == "Sexy" and by_id.loc["c", "batch"] == "b2"
    assert list(review["image_id"]) == ["b"] and "Casual 1, Natural 1" in review.iloc[0]["reason"]
    styles = agreement[agreement["scope"] == "style"].set_index("key")
    assert (
        styles.loc["Sporty", "alpha"] == 1.0 and styles.loc["Sporty", "images"] == 1
    )  # named by both experts of b, by none of a
    assert styles.loc["Romantic", "alpha"] < 0.5  # named by two of a's three experts
    b2 = agreement[(agreement["scope"] == "batch") & (agreement["key"] == "b2")]
    assert (b2["images"] == 0).all() and b2["alpha"].isna().all()  # single-annotator images do not count


def test_an_expert_counts_once_per_image_with_their_newest_annotation():
    table = annotations([
        ("a", "Casual", []), ("a", "Casual", []), ("a", "Sporty", []),  # expert 1 twice (second tab) vs. expert 2
        # expert 1 changed their mind in a later annotation
        ("b", "Casual", []), ("b", "Sporty", []), ("b", "Sporty", []),
        # no timestamps (K-Fashion, CSV): nothing orders them
        ("c", "Natural", []), ("c", "Sexy", []),
    ])  # fmt: skip
    table["annotator"] = ["1", "1", "2", "1", "1", "2", "kfashion", "kfashion"]
    table["updated_at"] = pd.to_datetime(
        ["2019-07-01", "2019-07-02", "2019-07-01", "2019-07-02", "2019-07-03", "2019-07-01", None, None], utc=True
    )
    labels, review, _ = consolidate(table, pd.DataFrame({"image_id": ["a", "b", "c"], "batch": ["b1"] * 3}))
    by_id = labels.set_index("image_id")
    assert (
        pd.isna(by_id.loc["a", "main_style"]) and by_id.loc["a", "needs_review"] and by_id.loc["a", "n_annotators"] == 2
    )
    assert list(review["image_id"]) == ["a", "c"] and "Casual 1, Sporty 1" in review.iloc[0]["reason"]
    assert (
        by_id.loc["b", "main_style"] == "Sporty"
        and by_id.loc["b", "main_agreement"] == 1.0
        and by_id.loc["b", "n_annotators"] == 2
    )
    assert pd.isna(by_id.loc["c", "main_style"]) and by_id.loc["c", "needs_review"], "no version is chosen silently"
    assert review.iloc[1]["reason"].startswith("kfashion labels it 2 times, differently: ")


def test_an_export_file_read_twice_changes_nothing():
    table = annotations([("a", "Romantic", ["Elegant"]), ("b", "Casual", []), ("b", "Natural", [])])
    table["updated_at"] = pd.Timestamp("2019-07-01", tz="UTC")
    twice = pd.concat([table, table.assign(source="copy of export.json")], ignore_index=True)
    catalog = pd.DataFrame({"image_id": ["a", "b"], "batch": ["b1", "b1"]})
    for once, doubled in zip(consolidate(table, catalog), consolidate(twice, catalog), strict=True):
        pd.testing.assert_frame_equal(once, doubled)
    _, _, agreement = consolidate(twice, catalog)
    romantic = agreement[(agreement["scope"] == "style") & (agreement["key"] == "Romantic")].iloc[0]
    assert romantic["images"] == 0 and pd.isna(romantic["alpha"]), "one expert read twice is not two experts agreeing"


def test_no_valid_annotations_give_empty_typed_tables(tmp_path, capsys):
    skipped = annotations([("a", None, []), ("b", None, [])]).assign(cancelled=True)
    pd.DataFrame({"image_id": ["a", "b"], "batch": ["b1", "b1"]}).to_parquet(tmp_path / "catalog.parquet")
    for table in (skipped, skipped.iloc[:0]):
        table.to_parquet(tmp_path / "annotations.parquet")
        paths = ["--annotations", "annotations.parquet", "--catalog", "catalog.parquet", "--out", "labels.parquet",
                 "--review", "review.csv", "--agreement", "agreement.parquet",
                 "--metrics", "agreement.json"]  # fmt: skip
        assert (
            consolidate_main([str(tmp_path / p) if p.endswith(("parquet", "csv", "json")) else p for p in paths]) == 0
        )
        assert "no valid annotations" in capsys.readouterr().out
        labels = pd.read_parquet(tmp_path / "labels.parquet")
        assert labels.empty and labels.dtypes.astype(str).to_dict() == {
            k: str(pd.Series(dtype=v).dtype) for k, v in IMAGE_LABEL_COLUMNS.items()
        }
        assert pq.read_schema(tmp_path / "labels.parquet").field("sub_styles").type == pa.list_(pa.string())
        assert pd.read_csv(tmp_path / "review.csv").columns.tolist() == ["image_id", "reason"]
        agreement = pd.read_parquet(tmp_path / "agreement.parquet")
        assert agreement.empty and agreement.dtypes.astype(str).to_dict() == {
            "scope": "string",
            "key": "string",
            "measure": "string",
            "alpha": "float64",
            "images": "int64",
        }
        assert json.loads((tmp_path / "agreement.json").read_text()) == {
            "images_with_several_experts": 0,
            "alpha": {},
            "alpha_per_style": {},
        }


class FakeLabelStudio:
    """The SDK calls push makes, on one in-memory project.

    The first `lost_answers` imports save their tasks, then time out. The first `late_saves`
    imports time out at once and their tasks land after the next import: the server was still saving.
    """

    def __init__(self, title: str, image_ids: list[str], lost_answers: int = 0, late_saves: int = 0):
        self.saved: dict[int, dict] = {}  # task id -> data
        self.ids = itertools.count(100)
        self.work: dict[int, dict] = {}  # task id -> fields of work someone started on it (as tasks.get reports them)
        self.gone: set[int] = set()  # deleted behind the listing's back
        self.late: list[list[dict]] = []
        self.save([{"data": {"image_id": i}} for i in image_ids])
        self.lost_answers, self.late_saves = lost_answers, late_saves
        self.down_from_import: int | None = None  # the server is down from this import request on
        self.requests: list[tuple[str, object]] = []
        project = SimpleNamespace(id=7, title=title, label_config="")
        self.projects = SimpleNamespace(
            list=lambda: [project], update=lambda *a, **k: None, import_tasks=self.import_tasks
        )
        self.import_storage = SimpleNamespace(local=SimpleNamespace(list=lambda project: [], create=lambda **k: None))
        self.tasks = SimpleNamespace(list=self.list_tasks, get=self.get_task, delete=self.delete_task)

    def save(self, tasks: list[dict]) -> None:
        for task in tasks:
            self.saved[next(self.ids)] = task["data"]

    def image_ids(self) -> list[str]:
        return [data["image_id"] for data in self.saved.values()]

    def list_tasks(self, project: int, fields: str):
        self.requests.append(("list tasks", fields))
        return [SimpleNamespace(id=i, data=data) for i, data in self.saved.items()]

    def get_task(self, id: str):
        self.requests.append(("get", int(id)))
        if int(id) in self.gone:
            raise ApiError(status_code=404, body={"detail": "Not found."})
        untouched = {
            "total_annotations": 0,
            "cancelled_annotations": 0,
            "draft_exists": False,
            "comment_count": 0,
            "annotators": [],
        }
        return SimpleNamespace(id=int(id), data=self.saved[int(id)], **untouched | self.work.get(int(id), {}))

    def import_tasks(self, project_id: int, request: list[dict], request_options: dict | None = None):
        self.requests.append(("import", request_options))
        if (
            self.down_from_import is not None
            and [what for what, _ in self.requests].count("import") >= self.down_from_import
        ):
            raise httpx.ConnectError("connection refused")
        if self.late_saves:
            self.late_saves -= 1
            self.late.append(request)
            raise httpx.ReadTimeout("still saving")
        self.save(request)
        while self.late:
            self.save(self.late.pop())
        if self.lost_answers:
            self.lost_answers -= 1
            raise httpx.ReadTimeout("saved, but the answer was lost")

    def delete_task(self, id: str) -> None:
        self.requests.append(("delete", int(id)))
        del self.saved[int(id)]


@pytest.fixture()
def push_setup(tmp_path, monkeypatch):
    """(connection, settings, taxonomy, crawl dir, fake server factory): push_images against a FakeLabelStudio."""
    settings = AnnotationSettings(
        project="styles",
        chunk_size=2,
        port=8080,  # unused: the tests pass the server URL
        data_dir=tmp_path,
        document_root=tmp_path,
        order="least_confident",
        round_size=2,
    )
    conn = Connection(url="http://fake", token="t", attempts=3, backoff_s=0)

    def serve(image_ids: list[str], lost_answers: int = 0, late_saves: int = 0) -> FakeLabelStudio:
        fake = FakeLabelStudio(settings.project, image_ids, lost_answers, late_saves)
        monkeypatch.setattr(Connection, "client", lambda self: fake)
        return fake

    return conn, settings, load_taxonomy(ROOT / "taxonomies/kfashion_styles.yaml"), tmp_path / "crawl", serve


def images(ids: str) -> pd.DataFrame:
    return pd.DataFrame({"image_id": list(ids), "path": [f"b1/{i}.jpg" for i in ids]})


@pytest.mark.parametrize("lost_answers", [1, 3])
def test_an_import_whose_answer_is_lost_never_creates_a_task_twice(push_setup, lost_answers):
    conn, settings, taxonomy, crawl, serve = push_setup
    fake = serve([], lost_answers)
    assert push_images(conn, settings, taxonomy, images("abc"), crawl) == (7, 3)
    assert sorted(fake.image_ids()) == ["a", "b", "c"]
    assert all(options == {"max_retries": 0} for what, options in fake.requests if what == "import"), (
        "the SDK must not re-send the POST"
    )
    assert all(fields == "task_only" for what, fields in fake.requests if what == "list tasks")


@pytest.mark.parametrize("late_saves", [1, 2])
def test_tasks_label_studio_saves_after_the_retry_listed_the_project_are_deleted_again(push_setup, late_saves, capsys):
    conn, settings, taxonomy, crawl, serve = push_setup
    fake = serve(["x"], late_saves=late_saves)
    assert push_images(conn, settings, taxonomy, images("xabcde"), crawl) == (7, 5)
    assert sorted(fake.image_ids()) == ["a", "b", "c", "d", "e", "x"]
    assert list(fake.saved)[:3] == [100, 101, 102], "each image keeps its first task"
    copies = 2 * late_saves  # a and b (the first chunk) each saved once more per late attempt
    assert f"push: deleted {copies} duplicate tasks" in capsys.readouterr().out


WORK = {
    "annotation": {"total_annotations": 1},
    "skip": {"cancelled_annotations": 1},
    "draft": {
        "draft_exists": True
    },  # an expert's autosaved work in progress (tasks.get lists only the caller's own in `drafts`)
    "comment": {"comment_count": 1},
    "annotator": {"annotators": [2]},
    "a field the server did not send": {"draft_exists": None},
}


@pytest.mark.parametrize("work", WORK.values(), ids=WORK.keys())
def test_a_copy_someone_started_on_is_kept_and_the_untouched_ones_go(push_setup, work):
    conn, settings, taxonomy, crawl, serve = push_setup
    fake = serve(["a", "a", "a", "b"])  # ids 100..103
    fake.work[101] = work
    assert remove_duplicate_tasks(conn, fake, listed_images(fake, 7)) == 2
    assert sorted(fake.saved) == [101, 103], "the started copy stays, even when an untouched one is older"
    assert [i for what, i in fake.requests if what == "get"] == [100, 101, 102], "each copy is read again right before"


def test_without_work_on_any_copy_the_oldest_stays_and_a_copy_gone_meanwhile_is_no_error(push_setup):
    conn, settings, taxonomy, crawl, serve = push_setup
    fake = serve(["a", "a", "b", "b", "b"])  # ids 100..104
    fake.gone.add(102)  # deleted in the UI after the listing
    assert remove_duplicate_tasks(conn, fake, listed_images(fake, 7)) == 2
    assert sorted(fake.saved) == [100, 102, 103]  # (102 is gone on the real server)


def test_copies_a_failed_push_left_are_deleted_by_the_next(push_setup, capsys):
    conn, settings, taxonomy, crawl, serve = push_setup
    fake = serve([], late_saves=1)
    fake.down_from_import = 3  # 1: ab, saved late; 2: ab again; 3: cd
    with pytest.raises(LabelStudioError, match="import 2 tasks: cannot reach Label Studio"):
        push_images(conn, settings, taxonomy, images("abcd"), crawl)
    assert sorted(fake.image_ids()) == ["a", "a", "b", "b"]
    fake.down_from_import = None
    assert push_images(conn, settings, taxonomy, images("abcd"), crawl) == (7, 2)
    assert sorted(fake.image_ids()) == ["a", "b", "c", "d"]
    assert "push: deleted 2 duplicate tasks" in capsys.readouterr().out


def test_a_task_already_gone_is_not_an_error_but_other_refusals_are():
    def refuse(status: int) -> None:
        raise ApiError(status_code=status, body={"detail": "Not found."})

    assert unless_gone(lambda: refuse(404)) is None  # e.g. a delete retried after its first answer was lost
    with pytest.raises(ApiError):
        unless_gone(lambda: refuse(500))


def test_a_push_without_retries_or_duplicates_lists_the_project_once_and_reads_no_task(push_setup):
    conn, settings, taxonomy, crawl, serve = push_setup
    fake = serve(["a"])
    push_images(conn, settings, taxonomy, images("abcde"), crawl)
    assert [what for what, _ in fake.requests if what in ("list tasks", "get", "delete")] == ["list tasks"]


def test_predictions_are_made_for_the_new_images_only(push_setup):
    conn, settings, taxonomy, crawl, serve = push_setup
    fake = serve(["a", "b"])
    asked: list[list[str]] = []

    def predict(new: pd.DataFrame) -> dict[str, Prediction]:
        asked.append(list(new["image_id"]))
        return {i: Prediction("m@1", [("Casual", p)]) for i, p in zip(new["image_id"], [0.9, 0.3], strict=True)}

    assert push_images(conn, settings, taxonomy, images("abcd"), crawl, predict) == (7, 2)
    assert asked == [["c", "d"]]
    assert fake.image_ids() == ["a", "b", "d", "c"], "most uncertain first"
    serve(list("abcd"))
    push_images(conn, settings, taxonomy, images("abcd"), crawl, predict)
    assert asked == [["c", "d"]], "nothing new: the model is not even loaded"


def test_a_review_list_sends_its_images_most_urgent_first_with_why(push_setup, tmp_path):
    conn, settings, taxonomy, crawl, serve = push_setup
    issues = pd.DataFrame({"rank": [1, 2, 3, 4], "image_id": ["c", "a", "c", "d"],
                           "label": ["Sexy", "Casual", "Romantic", "Sporty"],
                           "kind": ["missing", "wrong main style", "extra sub-style", "missing"],
                           "model_probability": [0.97, 0.02, 0.01, 0.9]})  # fmt: skip
    issues.to_parquet(tmp_path / "label_issues.parquet")
    items = review_items(tmp_path / "label_issues.parquet", top=2)
    assert items.to_dict("records") == [
        {"image_id": "c", "suspicion": "missing Sexy (model 0.97); extra sub-style Romantic (model 0.01)"},
        {"image_id": "a", "suspicion": "wrong main style Casual (model 0.02)"},
    ]
    pd.DataFrame({"image_id": ["b"], "reason": ["tie for main style: Casual 1, Natural 1"]}).to_csv(
        tmp_path / "review.csv", index=False
    )
    assert review_items(tmp_path / "review.csv", top=2).to_dict("records") == [
        {"image_id": "b", "suspicion": "tie for main style: Casual 1, Natural 1"}
    ]
    fake = serve([])
    push_images(
        conn,
        settings,
        taxonomy,
        images("ca"),
        crawl,
        suspicions=dict(zip(items["image_id"], items["suspicion"], strict=True)),
    )
    assert fake.image_ids() == ["c", "a"] and [data["suspicion"] for data in fake.saved.values()] == list(
        items["suspicion"]
    )


def test_new_tasks_follow_the_labelling_order_of_the_settings(push_setup):
    conn, settings, taxonomy, crawl, serve = push_setup
    fake = serve([])
    scores = {
        "a": [0.9, 0.1],
        "b": [0.5, 0.5],
        "c": [0.95, 0.6],
        "d": [0.6, 0.1],
    }  # mean entropy: b > d > c > a; top-1: b < d < a < c

    def predict(new: pd.DataFrame) -> dict[str, Prediction]:
        return {
            i: Prediction("m@1", [("Casual", max(scores[i]))], scores=scores[i], embedding=[1.0, 0.0])
            for i in new["image_id"]
        }

    push_images(conn, dataclasses.replace(settings, order="entropy"), taxonomy, images("abcd"), crawl, predict)
    assert fake.image_ids() == ["b", "d", "c", "a"]
    fake = serve([])
    push_images(conn, dataclasses.replace(settings, order="least_confident"), taxonomy, images("abcd"), crawl, predict)
    assert fake.image_ids() == ["b", "d", "a", "c"]


def test_crawl_outside_the_document_root_is_named_before_any_request(tmp_path):
    settings = AnnotationSettings(
        project="styles",
        chunk_size=2,
        port=8080,  # unused: the tests pass the server URL
        data_dir=tmp_path,
        document_root=tmp_path / "data",
        order="least_confident",
        round_size=2,
    )
    closed = Connection(url="http://127.0.0.1:9", token="x", attempts=1)
    taxonomy = load_taxonomy(ROOT / "taxonomies/kfashion_styles.yaml")
    with pytest.raises(
        LabelStudioError, match=r"crawl.dir .*/srv-crawl is not under annotation.document_root .*/data.*params.yaml"
    ):
        push_images(closed, settings, taxonomy, images("a"), tmp_path / "srv-crawl")


def test_push_checks_the_connection_before_predicting(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    images("ab").assign(batch="b1").to_parquet(tmp_path / "catalog.parquet")
    monkeypatch.setattr("annotation.__main__.load_predictions", lambda *a: pytest.fail("predicted before connecting"))
    assert (
        annotation_main(
            ["push", "--catalog", str(tmp_path / "catalog.parquet"), "--checkpoint", str(tmp_path / "best.pt")]
        )
        == 2
    )
    assert "set LABEL_STUDIO_URL" in capsys.readouterr().err


def test_push_takes_the_model_to_predict_with_by_name_by_validation_or_by_file(tmp_path):
    def chosen(*argv: str) -> Path | None:
        return chosen_checkpoint(parse_args(["push", "--models-dir", str(tmp_path), *argv]))

    assert chosen("--model", "mlgcn") == tmp_path / "mlgcn" / "best.pt"
    assert chosen("--checkpoint", "elsewhere/best.pt") == Path("elsewhere/best.pt")
    assert chosen() is None, "no model: tasks without pre-annotations"
    with pytest.raises(SystemExit):
        chosen("--model", "best", "--checkpoint", "elsewhere/best.pt")


def test_a_server_too_slow_to_answer_is_not_reported_as_down():
    with socket.socket() as listener:  # listens, never answers: the request times out after the connection
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        slow = Connection(
            url=f"http://127.0.0.1:{listener.getsockname()[1]}", token="x", attempts=4, backoff_s=0.01, wait_s=0.6
        )
        started = time.monotonic()
        with pytest.raises(
            LabelStudioError, match=r"export project 'styles': .* did not answer within 0.2 s \(2 attempts in 0.6 s\)"
        ) as failure:
            slow.call("export project 'styles'", lambda: list(slow.client().projects.list()))
        assert time.monotonic() - started < 0.6 + 0.3, "the whole wait is bounded, not attempts x timeout"
    assert "cannot reach" not in str(failure.value) and "LABEL_STUDIO_WAIT_S" in str(failure.value)


def test_pull_names_the_dvc_command_to_run_when_dvc_add_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://fake")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "t")
    (tmp_path / "dvc").write_text("#!/bin/sh\necho 'ERROR: you are not inside of a DVC repository' >&2\nexit 255\n")
    (tmp_path / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(
        "annotation.__main__.snapshot_from_server",
        lambda conn, title, exports: [(exports / "label-studio-styles.json", True)],
    )
    assert annotation_main(["pull"]) == 2
    assert "run `dvc add data/label-exports` by hand" in capsys.readouterr().err


def test_pull_snapshots_the_review_project_next_to_the_main_one(tmp_path, monkeypatch):
    projects = [
        SimpleNamespace(id=1, title="styles"),
        SimpleNamespace(id=2, title="styles (review)"),
        SimpleNamespace(id=3, title="other"),
    ]
    exports = {1: [{"id": 1, "data": {"image_id": "a"}}], 2: [{"id": 9, "data": {"image_id": "a"}}]}
    fake = SimpleNamespace(
        projects=SimpleNamespace(
            list=lambda: projects, exports=SimpleNamespace(as_json=lambda project_id: exports[project_id])
        )
    )
    monkeypatch.setattr(Connection, "client", lambda self: fake)
    snapshots = snapshot_from_server(Connection(url="http://fake", token="t"), "styles", tmp_path)
    assert [(path.name, changed) for path, changed in snapshots] == [
        ("label-studio-styles.json", True),
        ("label-studio-styles-review.json", True),
    ]
    assert json.loads((tmp_path / "label-studio-styles-review.json").read_text()) == exports[2]


def test_two_projects_of_one_title_are_refused_by_push_and_pull_alike(tmp_path, monkeypatch):
    projects = [SimpleNamespace(id=4, title="styles"), SimpleNamespace(id=7, title="styles")]
    fake = SimpleNamespace(projects=SimpleNamespace(list=lambda: projects))
    monkeypatch.setattr(Connection, "client", lambda self: fake)
    conn = Connection(url="http://fake", token="t")
    with pytest.raises(
        LabelStudioError, match=r"2 projects on http://fake are titled 'styles' \(ids 4, 7\): rename or delete"
    ):
        snapshot_from_server(conn, "styles", tmp_path)
    with pytest.raises(LabelStudioError, match=r"2 projects .* titled 'styles'"):
        find_projects(conn, fake, "styles")
    assert list(tmp_path.iterdir()) == []


STAND_IN_LABEL_STUDIO = """#!{python}
\"\"\"Stands in for `label-studio start` in serve's tests: the real one takes minutes to install and a minute to start.

Like Label Studio it answers /health and keeps the API token of its FIRST start (in its data
dir) for /api/current-user/whoami. STAND_IN=crash exits while starting; STAND_IN=mute never answers;
STAND_IN=die exits with code 3 once it has answered whoami (a crash while the experts work), STAND_IN=killed
is killed by SIGKILL then (as by the out-of-memory killer), STAND_IN=realtime by a real-time signal (no name).
\"\"\"
import os, signal, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

port, data_dir = int(sys.argv[sys.argv.index("-p") + 1]), Path(sys.argv[sys.argv.index("--data-dir") + 1])
(data_dir / "stand-in.pid").write_text(str(os.getpid()))
if os.environ.get("STAND_IN") == "crash":
    sys.exit("stand-in: cannot start")
if os.environ.get("STAND_IN") == "mute":
    time.sleep(600)
token_file = data_dir / "token"
if not token_file.exists():
    token_file.write_text(os.environ["LABEL_STUDIO_USER_TOKEN"])
token = token_file.read_text()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        accepted = self.headers.get("Authorization") == f"Token {{token}}"
        self.send_response({{"/health": 200, "/api/current-user/whoami": 200 if accepted else 401}}.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()
        if self.path == "/api/current-user/whoami" and os.environ.get("STAND_IN") in ("die", "killed", "realtime"):
            self.wfile.flush()
            if os.environ["STAND_IN"] != "die":
                os.kill(os.getpid(), signal.SIGKILL if os.environ["STAND_IN"] == "killed" else signal.SIGRTMIN + 2)
            os._exit(3)


HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


class SignalReachedTheTest(Exception):
    """serve left SIGTERM/SIGHUP to the test's handler instead of stopping its server."""


def signal_this_process(
    send: signal.Signals, once: Callable[[], bool], delay_s: float, finished: threading.Event
) -> threading.Thread:
    """A started thread that sends `send` to this process (as `kill` or Ctrl-C would) `delay_s` after `once()` holds,
    unless `finished` is set first."""

    def wait_and_send() -> None:
        deadline = time.monotonic() + 30
        while not finished.is_set() and time.monotonic() < deadline and not once():
            time.sleep(0.05)
        if not finished.wait(delay_s):
            os.kill(os.getpid(), send)

    thread = threading.Thread(target=wait_and_send, daemon=True)
    thread.start()
    return thread


@dataclass
class LocalServe:
    """A project folder whose .venv-labelstudio holds the stand-in server; `serve` runs there."""

    root: Path
    port: int

    @property
    def settings(self) -> ServerSettings:
        return ServerSettings(
            port=self.port,
            data_dir=self.root / ".labelstudio",
            document_root=self.root / "data",
            venv=self.root / ".venv-labelstudio",
        )

    def server_pid(self) -> int | None:
        pid_file = self.settings.data_dir / "stand-in.pid"
        return int(pid_file.read_text()) if pid_file.exists() and pid_file.read_text() else None

    def server_running(self) -> bool:
        pid = self.server_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def answering(self) -> bool:
        try:
            return httpx.get(f"{self.settings.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def serve(
        self, send: signal.Signals = signal.SIGTERM, once: Callable[[], bool] | None = None, delay_s: float = 3.0
    ) -> int:
        """`python -m annotation serve` here; `send` reaches this process `delay_s` after `once()` holds (default:
        answering).

        The test's own SIGTERM/SIGHUP handler raises SignalReachedTheTest, so a serve that does not handle the
        signal fails the test instead of ending pytest, and a serve that never returns is ended that way too.
        """

        def refuse(signum: int, frame: object) -> None:
            raise SignalReachedTheTest(signal.Signals(signum).name)

        finished = threading.Event()
        previous = {signum: signal.signal(signum, refuse) for signum in (signal.SIGTERM, signal.SIGHUP)}
        sender = signal_this_process(send, once or self.answering, delay_s, finished)
        try:
            code = annotation_main(["--params", str(self.root / "params.yaml"), "serve", "--port", str(self.port)])
            assert all(signal.getsignal(signum) is refuse for signum in previous), (
                "serve must restore the signal handlers"
            )
            return code
        finally:
            finished.set()
            sender.join()
            for signum, handler in previous.items():
                signal.signal(signum, handler)


@pytest.fixture()
def local_serve(tmp_path, monkeypatch):
    """A project folder with params.yaml, the credentials in the environment and the stand-in installed."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "LABEL_STUDIO_USERNAME": "lead@example.invalid",
        "LABEL_STUDIO_PASSWORD": "pw",
        "LABEL_STUDIO_API_KEY": "first-key-0123",
    }.items():
        monkeypatch.setenv(name, value)
    local = LocalServe(tmp_path, free_port())
    exe = local.settings.venv / "bin" / "label-studio"
    exe.parent.mkdir(parents=True)
    exe.write_text(STAND_IN_LABEL_STUDIO.format(python=sys.executable))
    exe.chmod(0o755)
    (local.settings.venv / ".installed").write_text("stand-in\n")
    yield local
    if local.server_running():  # left over by a failing test: the stand-in this test started
        os.kill(local.server_pid(), signal.SIGKILL)


def test_ctrl_c_while_the_server_starts_stops_it(local_serve, monkeypatch):
    monkeypatch.setenv("STAND_IN", "mute")
    signal_this_process(signal.SIGINT, local_serve.server_running, 0.2, threading.Event())
    with pytest.raises(KeyboardInterrupt):
        start(local_serve.settings, credentials())
    assert local_serve.server_pid() is not None and not local_serve.server_running()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the server ends with serve through Linux's PR_SET_PDEATHSIG")
def test_a_serve_killed_outright_does_not_leave_its_server_holding_the_port(local_serve):
    command = [
        sys.executable,
        "-m",
        "annotation",
        "--params",
        str(local_serve.root / "params.yaml"),
        "serve",
        "--port",
        str(local_serve.port),
    ]
    log = local_serve.root / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            command,
            cwd=local_serve.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        deadline = time.monotonic() + 60
        while not local_serve.answering() and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(0.05)
        assert local_serve.answering() and local_serve.server_running(), log.read_text()
        serve.kill()  # SIGKILL: serve cannot stop its server itself
        serve.wait()
        deadline = time.monotonic() + 10
        while local_serve.server_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not local_serve.server_running(), "the server went with serve"
    finally:
        serve.kill()


@pytest.mark.parametrize(
    ("send", "phase"),
    [(signal.SIGTERM, "starting"), (signal.SIGHUP, "answering")],
    ids=["SIGTERM-starting", "SIGHUP-answering"],
)
def test_sigterm_or_sighup_stop_serve_and_its_server(local_serve, monkeypatch, capsys, send, phase):
    if phase == "starting":
        monkeypatch.setenv("STAND_IN", "mute")
    assert local_serve.serve(send, once=local_serve.server_running if phase == "starting" else None, delay_s=0.3) == 0
    assert local_serve.server_pid() is not None and not local_serve.server_running()
    assert "Label Studio stopped" in capsys.readouterr().err


def test_a_taken_port_is_an_error_not_another_servers_health(local_serve, capsys):
    with socket.socket() as holder:  # an earlier serve still holding the port, answering /health
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", local_serve.port))
        holder.listen()
        threading.Thread(
            target=lambda: holder.accept()[0].sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), daemon=True
        ).start()
        assert local_serve.serve() == 2
    err = capsys.readouterr().err
    assert f"port {local_serve.port} in use (an earlier `serve`?): stop it or use --port / annotation.port" in err
    assert local_serve.server_pid() is None, "the server was not even started"


def test_a_server_that_exits_while_starting_is_an_error_naming_its_log(local_serve, monkeypatch, capsys):
    monkeypatch.setenv("STAND_IN", "crash")
    assert local_serve.serve() == 2
    err = capsys.readouterr().err
    assert (
        f"exited with code 1 while starting; its log says why: {Path('.labelstudio/server.log')}" in err
        and "Traceback" not in err
    )
    assert "stand-in: cannot start" in (local_serve.settings.log_path).read_text()


@pytest.mark.parametrize(
    ("mode", "status"), [("die", "code 3"), ("killed", "signal SIGKILL"), ("realtime", f"signal {signal.SIGRTMIN + 2}")]
)
def test_a_server_that_dies_while_serving_is_an_error_naming_its_log(local_serve, monkeypatch, capsys, mode, status):
    monkeypatch.setenv("STAND_IN", mode)
    assert local_serve.serve(once=lambda: False, delay_s=30) == 2, "a crash is not a clean stop"
    err = capsys.readouterr().err
    assert f"Label Studio exited on its own with {status}; its log says why: {Path('.labelstudio/server.log')}" in err
    assert "Label Studio stopped" not in err


def test_an_api_key_other_than_the_first_starts_is_refused_and_the_server_stopped(local_serve, monkeypatch, capsys):
    local_serve.settings.data_dir.mkdir()
    (local_serve.settings.data_dir / "token").write_text("key-of-the-first-start")  # the stand-in's "database"
    assert local_serve.serve() == 2
    assert "database (.labelstudio) was created with another API key" in capsys.readouterr().err
    assert not local_serve.server_running()


def test_an_api_key_label_studio_would_ignore_is_refused(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_USERNAME", "lead@example.invalid")
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", "pw")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "12345")
    with pytest.raises(
        ServerError, match="LABEL_STUDIO_API_KEY must be longer than 5 characters: Label Studio ignores"
    ):
        credentials()


def test_an_install_without_a_package_index_says_where_else_to_install_from(local_serve, monkeypatch, capsys):
    shutil.rmtree(local_serve.settings.venv)
    python = local_serve.root / "python"  # stands in for `python -m venv DIR`: its pip fails as pip does offline
    python.write_text(
        '#!/bin/sh\nmkdir -p "$3/bin" && printf \'#!/bin/sh\\necho "ERROR: No matching distribution found for '
        'label-studio" >&2\\nexit 1\\n\' > "$3/bin/pip" && chmod +x "$3/bin/pip"\n'
    )
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    assert local_serve.serve() == 2
    err = capsys.readouterr().err
    assert "pip could not install label-studio==1.23.2" in err and "PIP_INDEX_URL" in err and "PIP_FIND_LINKS" in err


def test_an_image_the_model_cannot_read_gets_no_pre_annotation(tmp_path, monkeypatch):
    checkpoint = tmp_path / "models" / "mlgcn" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"stand-in: loading and predicting are replaced below")
    rows = [{"path": "b1/a.jpg", "top": [["Casual", 0.9], ["Sexy", 0.2]], "predicted": ["Casual", "Sexy"],
             "pre_ticked": ["Casual"], "scores": {"Casual": 0.9, "Sexy": 0.2}, "embedding": np.ones(3)},
            {"path": "b1/b.jpg", "error": "cannot read image"}]  # fmt: skip
    loaded = {"meta": {"labels": ["Casual", "Sexy"]}, "thresholds": [0.5, 0.1], "click_thresholds": [0.5, None]}
    monkeypatch.setattr("training.checkpoint.load_checkpoint", lambda path: loaded)
    seen = {}

    def predicted(checkpoint, paths, top_k, **kwargs):
        seen.update(kwargs)
        return rows

    monkeypatch.setattr("training.predict.predict_checkpoint", predicted)
    images = pd.DataFrame({"image_id": ["a", "b"], "path": ["b1/a.jpg", "b1/b.jpg"]})
    predictions = load_predictions(checkpoint, images, tmp_path, top_k=3)
    assert list(predictions) == ["a"] and predictions["a"].ranked == [("Casual", 0.9), ("Sexy", 0.2)]
    assert predictions["a"].ticked == {"Casual"}, "the fewest-clicks ticks are pre-ticked, not the F1 list"
    assert seen["rules"].pre_tick.tolist() == [0.5, np.inf] and seen["rules"].source == "validation split", (
        "without a selection, the checkpoint's own fewest-clicks rule (Sexy: never pre-ticked)"
    )
    assert predictions["a"].scores == [0.9, 0.2] and predictions["a"].embedding == [1.0, 1.0, 1.0], (
        "what the labelling order reads"
    )


def test_serve_under_nohup_keeps_ignoring_hang_ups():
    """`nohup python -m annotation serve &` must survive the terminal closing; SIGTERM still stops it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
