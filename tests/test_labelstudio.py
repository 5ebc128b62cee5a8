"""Round trip through a REAL Label Studio server that this test session starts.

The server runs from .venv-labelstudio (installed on first use, ~2 min) with its
data in a temporary folder; experts are played by API calls, as the web UI makes them.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from annotation.__main__ import imported_labels
from annotation.client import Connection, LabelStudioError
from annotation.importers import import_label_studio, read_label_studio_export
from annotation.projects import review_title
from annotation.pull import export_path, snapshot_from_server
from annotation.push import Prediction, listed_images, push_images, remove_duplicate_tasks
from annotation.server import ServerError, ServerSettings, check_token, start, stop
from annotation.settings import AnnotationSettings
from annotation.sources import CatalogIndex
from common.settings import IngestSettings
from common.taxonomy import load_taxonomy
from demo.crawl import generate
from pipeline.ingest import ingest

ROOT = Path(__file__).parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, demo_settings, style_names):
    """A tiny demo crawl + catalog under <tmp>/data, the folder Label Studio serves files from."""
    root = tmp_path_factory.mktemp("ls-workspace")
    demo = dataclasses.replace(demo_settings, batches=1, images_per_batch=6, width=96, height=128)
    generate(demo, style_names, root / "data/crawl", root / "data/exports")
    settings = IngestSettings(workers=1, min_side=64, max_pixels=89_478_485, near_duplicate_distance=2)
    catalog = ingest(root / "data/crawl", root / "cache", settings)[0].to_pandas()
    return root, catalog


@pytest.fixture(scope="session")
def server_settings(tmp_path_factory, workspace) -> ServerSettings:
    root, _ = workspace
    return ServerSettings(
        port=free_port(),
        data_dir=tmp_path_factory.mktemp("ls-data"),
        document_root=root / "data",
        venv=ROOT / ".venv-labelstudio",
    )


@pytest.fixture(scope="session")
def server(server_settings):
    token = secrets.token_hex(20)
    creds = {
        "LABEL_STUDIO_USERNAME": "expert@stylegraph.invalid",
        "LABEL_STUDIO_PASSWORD": secrets.token_hex(8),
        "LABEL_STUDIO_API_KEY": token,
    }
    process = start(server_settings, creds)
    yield Connection(url=server_settings.url, token=token)
    stop(process)


@pytest.fixture()
def annotation_settings(workspace, request) -> AnnotationSettings:
    root, _ = workspace
    return AnnotationSettings(
        project=request.node.name[5:50],
        chunk_size=4,
        port=8080,  # unused: the tests pass the server URL
        data_dir=root,
        document_root=root / "data",
        order="least_confident",
        round_size=4,
    )


@pytest.fixture(scope="session")
def styles():
    return load_taxonomy(ROOT / "taxonomies/kfashion_styles.yaml")


def choices(name: str, values: list[str]) -> dict:
    return {"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": values}}


def test_push_twice_adds_each_image_once_in_chunks(server, workspace, annotation_settings, styles):
    root, catalog = workspace
    project_id, added = push_images(server, annotation_settings, styles, catalog, root / "data/crawl")
    assert added == len(catalog) > annotation_settings.chunk_size
    assert push_images(server, annotation_settings, styles, catalog, root / "data/crawl") == (project_id, 0)
    tasks = list(server.client().tasks.list(project=project_id, fields="all"))
    assert sorted(t.data["image_id"] for t in tasks) == sorted(catalog["image_id"])


def test_tasks_saved_after_the_retry_listed_the_project_are_deleted_again(
    server, workspace, annotation_settings, styles, monkeypatch
):
    """No test can make Label Studio finish an import late on demand, so the SDK call is wrapped to replay it:
    the first import "times out" unsent and is sent right after the retry's. Listing and deleting are real."""
    root, catalog = workspace
    ls = server.client()
    send = ls.projects.import_tasks
    late: list[list[dict]] = []

    def import_tasks(project_id: int, request: list[dict], request_options: dict | None = None) -> None:
        if not late:
            late.append(request)
            raise httpx.ReadTimeout("still saving")
        send(project_id, request=request, request_options=request_options)
        send(project_id, request=late[0], request_options=request_options)

    monkeypatch.setattr(ls.projects, "import_tasks", import_tasks)
    monkeypatch.setattr(Connection, "client", lambda self: ls)
    project_id, added = push_images(
        dataclasses.replace(server, backoff_s=0), annotation_settings, styles, catalog, root / "data/crawl"
    )
    assert added == len(catalog)
    tasks = list(ls.tasks.list(project=project_id, fields="task_only"))
    assert sorted(t.data["image_id"] for t in tasks) == sorted(catalog["image_id"])


def test_a_duplicate_someone_started_on_is_kept(server, workspace, annotation_settings, styles):
    root, catalog = workspace
    project_id, _ = push_images(server, annotation_settings, styles, catalog.head(3), root / "data/crawl")
    ls = server.client()
    first = sorted(ls.tasks.list(project=project_id, fields="task_only"), key=lambda t: t.id)
    ls.projects.import_tasks(project_id, request=[{"data": t.data} for t in first])  # a copy of each
    annotated, drafted, untouched = sorted(ls.tasks.list(project=project_id, fields="task_only"), key=lambda t: t.id)[
        3:
    ]
    ls.annotations.create(id=annotated.id, result=[choices("main_style", ["Casual"])], was_cancelled=False)
    draft = httpx.post(
        f"{server.url}/api/tasks/{drafted.id}/drafts",
        headers={"Authorization": f"Token {server.token}"},
        json={"result": [choices("main_style", ["Retro"])], "lead_time": 3.0},
    )
    assert draft.status_code == 201, draft.text  # what the editor autosaves while an expert works
    assert remove_duplicate_tasks(server, ls, listed_images(ls, project_id)) == 3
    left = {t.id for t in ls.tasks.list(project=project_id, fields="task_only")}
    assert left == {annotated.id, drafted.id, first[2].id}, (
        "a started copy replaces its untouched original; else the oldest stays"
    )


def test_label_studio_serves_the_pushed_photo(server, workspace, annotation_settings, styles):
    root, catalog = workspace
    project_id, _ = push_images(server, annotation_settings, styles, catalog.head(1), root / "data/crawl")
    task = next(iter(server.client().tasks.list(project=project_id, fields="all")))
    response = httpx.get(server.url + task.data["image"], headers={"Authorization": f"Token {server.token}"})
    assert response.status_code == 200
    assert response.content == (root / "data/crawl" / catalog.iloc[0]["path"]).read_bytes()


def test_round_trip_keeps_exactly_the_valid_annotations(server, workspace, annotation_settings, styles):
    root, catalog = workspace
    project_id, _ = push_images(server, annotation_settings, styles, catalog, root / "data/crawl")
    ls = server.client()
    tasks = sorted(ls.tasks.list(project=project_id, fields="all"), key=lambda t: t.id)
    expert = [
        ([choices("main_style", ["Romantic"]), choices("sub_styles", ["Elegant", "Sexy"])], False, None),
        ([choices("main_style", ["Casual"])], False, None),
        ([choices("sub_styles", ["Sexy"])], False, "no main style"),
        ([choices("main_style", ["Casual", "Sporty"])], False, "2 main styles"),
        ([choices("main_style", ["Boho"])], False, "unknown style(s) ['Boho']"),
        ([], True, "cancelled"),
    ]
    for task, (result, cancelled, _) in zip(tasks, expert, strict=False):
        ls.annotations.create(id=task.id, result=result, was_cancelled=cancelled, lead_time=4.5)

    exports = root / f"exports-{project_id}"
    [(path, changed)] = snapshot_from_server(server, annotation_settings.project, exports)
    assert changed and snapshot_from_server(server, annotation_settings.project, exports) == [(path, False)]
    imported = import_label_studio(
        read_label_studio_export(path), str(path), styles, CatalogIndex(catalog).by_key, set(catalog["image_id"])
    )
    rows, rejects = imported.tables()
    valid = rows[~rows["cancelled"]].sort_values("main_style")
    assert list(valid["main_style"]) == ["Casual", "Romantic"]
    assert valid.iloc[1]["sub_styles"] == ["Elegant", "Sexy"] and valid.iloc[1]["lead_time"] == 4.5
    reasons = sorted(rejects["reason"])
    assert len(reasons) == 4
    for (_, _, expected), image_id in zip(expert[2:], [t.data["image_id"] for t in tasks[2:6]], strict=True):
        hit = rejects[rejects["image_id"] == image_id]
        assert len(hit) == 1 and hit.iloc[0]["reason"].startswith(expected), (expected, hit)


def test_predictions_become_pre_annotations_most_uncertain_first(server, workspace, annotation_settings, styles):
    root, catalog = workspace
    confidences = [0.9, 0.2, 0.6, 0.4]
    subset = catalog.head(len(confidences))
    predictions = {
        # Sexy at 0.1 is over its own (validation) threshold, Natural at 0.55 is not: the thresholds decide, not 0.5
        image_id: Prediction("mlgcn@1", [("Casual", p), ("Natural", 0.55), ("Sexy", 0.1)], frozenset({"Sexy"}))
        for image_id, p in zip(subset["image_id"], confidences, strict=True)
    }
    project_id, _ = push_images(
        server, annotation_settings, styles, subset, root / "data/crawl", lambda new: predictions
    )
    exported = server.client().projects.exports.as_json(project_id)
    queue = [predictions[t["data"]["image_id"]].confidence for t in sorted(exported, key=lambda t: t["id"])]
    assert queue == sorted(confidences)
    prediction = server.client().predictions.list(task=exported[0]["id"])[0]
    assert prediction.model_version == "mlgcn@1"
    assert [r["value"]["choices"] for r in prediction.result] == [["Casual"], ["Sexy"]]


def test_push_labels_sends_existing_labels_as_pre_annotations_for_review(
    server, workspace, annotation_settings, styles, tmp_path
):
    root, catalog = workspace
    files = [s[0]["file"] for s in catalog["sources"].head(2)]
    (tmp_path / "tags.csv").write_text(f"image,tags,main_style\n{files[0]},Sporty;Hiphop,Casual\n", encoding="utf-8")
    (tmp_path / "sets.csv").write_text(
        f"image,tags\n{files[1]},Sexy\n", encoding="utf-8"
    )  # a tag set: no main label to pre-select
    catalog.to_parquet(tmp_path / "catalog.parquet")

    def labels_of(name: str) -> dict:
        return imported_labels(
            tmp_path / name, root / "data/crawl", tmp_path / "catalog.parquet", styles, tmp_path / "cache"
        )

    predictions = {**labels_of("tags.csv"), **labels_of("sets.csv")}
    project_id, _ = push_images(
        server, annotation_settings, styles, catalog.head(2), root / "data/crawl", lambda new: predictions
    )
    results = {}
    for task in server.client().projects.exports.as_json(project_id):
        [prediction] = server.client().predictions.list(task=task["id"])
        results[task["data"]["image_id"]] = (
            prediction.model_version,
            [(r["from_name"], r["value"]["choices"]) for r in prediction.result],
        )
    ids = list(catalog["image_id"].head(2))
    assert results[ids[0]] == ("import:tags.csv", [("main_style", ["Casual"]), ("sub_styles", ["Hiphop", "Sporty"])])
    assert results[ids[1]] == ("import:sets.csv", [("sub_styles", ["Sexy"])])


def test_pull_snapshots_the_review_project_once_push_review_made_it(server, workspace, annotation_settings, styles):
    root, catalog = workspace
    settings = dataclasses.replace(
        annotation_settings, project="pull with review"
    )  # + " (review)": titles hold 50 characters
    project, crawl, exports = settings.project, root / "data/crawl", root / "exports-with-review"
    push_images(server, settings, styles, catalog, crawl)
    assert snapshot_from_server(server, project, exports) == [(export_path(exports, project), True)]
    why = {
        catalog.iloc[0]["image_id"]: "missing Sexy (model 0.97)"
    }  # a label_issues suspicion, shown as a Data Manager column
    review_id, _ = push_images(
        server, settings, styles, catalog.head(1), crawl, title=review_title(project), suspicions=why
    )
    task = next(iter(server.client().tasks.list(project=review_id, fields="task_only")))
    assert task.data["suspicion"] == "missing Sexy (model 0.97)"
    server.client().annotations.create(id=task.id, result=[choices("main_style", ["Sporty"])])
    main, review = snapshot_from_server(server, project, exports)
    assert main[1] is False and review == (export_path(exports, review_title(project)), True)
    assert review[0].name.endswith("-review.json")
    assert [t["annotations"][0]["result"][0]["value"]["choices"] for t in read_label_studio_export(review[0])] == [
        ["Sporty"]
    ]


def test_wrong_token_is_a_clear_error(server, annotation_settings, workspace, styles):
    root, catalog = workspace
    wrong = Connection(url=server.url, token="not-the-token", attempts=1)
    with pytest.raises(LabelStudioError, match="refused the token .* check LABEL_STUDIO_API_KEY"):
        push_images(wrong, annotation_settings, styles, catalog, root / "data/crawl")


def test_serve_accepts_the_key_of_the_first_start_and_refuses_another(server, server_settings):
    check_token(server_settings, server.token)
    with pytest.raises(ServerError, match="database .* was created with another API key"):
        check_token(server_settings, secrets.token_hex(20))


def _constant_head(models: Path, name: str, labels: list[str], probs: dict[str, float]) -> Path:
    """A real checkpoint of a linear head on offline ImageNet Lite0 features whose weights are zero: every photo gets
    `probs` (others 0.01), so what push pre-ticks depends on the decision rule alone."""
    import torch

    from training.checkpoint import build_trained_module, save_checkpoint
    from training.models import ModelSpec

    meta = {"name": name, "spec": dataclasses.asdict(ModelSpec(kind="linear", pooling="avg")), "labels": labels,
            "embedding_dim": 50, "gcn_hidden": 16, "finetuned": False, "feature_dim": 1280,
            "backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 32, "mean": [0.5] * 3,
            "std": [0.5] * 3, "train": {"precision": "fp32", "tta_flip": False}}  # fmt: skip
    head = build_trained_module(meta)
    p = torch.tensor([probs.get(label, 0.01) for label in labels])
    state = {key: torch.zeros_like(value) for key, value in head.state_dict().items()}
    [bias] = [key for key in state if key.endswith("bias")]
    state[bias] = torch.log(p / (1 - p))
    path = models / name / "best.pt"
    # The validation rules it was trained with: F1 ticks Sexy and Romantic, the fewest-clicks rule Romantic only.
    thresholds = [0.3 if label in ("Sexy", "Romantic") else 0.5 for label in labels]
    save_checkpoint({"meta": meta, "model": state, "epoch": 1, "val": {"mAP": 0.5}, "thresholds": thresholds,
                     "click_thresholds": thresholds}, path)  # fmt: skip
    return path


def test_push_model_best_pre_ticks_by_the_selections_fewest_clicks_rule(
    server, workspace, annotation_settings, styles, tmp_path
):
    from annotation.__main__ import chosen_checkpoint, load_predictions, parse_args

    root, catalog = workspace
    probs = {"Casual": 0.9, "Sexy": 0.6, "Romantic": 0.45}
    for name in ("linear", "csra"):
        _constant_head(tmp_path / "models", name, styles.names, probs)
    never = [None if label == "Sexy" else (0.4 if label == "Romantic" else 0.5) for label in styles.names]
    entry = {"f1_thresholds": [0.3] * len(styles.names), "click_thresholds": never}
    selection = {"labels": styles.names, "images": 100, "folds": 5, "chosen": "csra", "why": "test",
                 "models": {"csra": entry, "linear": entry}}  # fmt: skip
    (tmp_path / "selection.json").write_text(json.dumps(selection))
    args = parse_args(["push", "--model", "best", "--models-dir", str(tmp_path / "models"),
                       "--selection", str(tmp_path / "selection.json")])  # fmt: skip
    checkpoint = chosen_checkpoint(args)
    assert checkpoint == tmp_path / "models" / "csra" / "best.pt", "best: the select stage's choice"
    subset = catalog.head(2)
    project_id, added = push_images(
        server,
        annotation_settings,
        styles,
        subset,
        root / "data/crawl",
        lambda new: load_predictions(checkpoint, new, root / "data/crawl", len(styles.names), args.selection),
    )
    assert added == 2
    for task in server.client().projects.exports.as_json(project_id):
        [prediction] = server.client().predictions.list(task=task["id"])
        assert prediction.model_version.startswith("csra@")
        assert [r["value"]["choices"] for r in prediction.result] == [["Casual"], ["Romantic"]], (
            "main style pre-selected; Romantic ticked at 0.45 >= 0.4; Sexy (0.6) never: its ticks cost clicks"
        )
