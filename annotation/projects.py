"""Finding the project push and pull mean, by title, on a Label Studio server."""

from __future__ import annotations

from typing import Protocol

from label_studio_sdk import AllRolesProjectList, LabelStudio

from annotation.client import Connection, LabelStudioError


def review_title(project: str) -> str:
    """Title of the project that `push --review` sends tied images to (and `pull` snapshots)."""
    return f"{project} (review)"


def find_projects(conn: Connection, ls: LabelStudio, *titles: str) -> list[AllRolesProjectList | None]:
    """The project called each of `titles`, or None, from one listing; two of one title are an error (push and pull must
    mean the same one)."""
    projects: list[AllRolesProjectList] = conn.call("list projects", lambda: list(ls.projects.list()))
    found: list[AllRolesProjectList | None] = []
    for title in titles:
        matches = [p for p in projects if p.title == title]
        if len(matches) > 1:
            raise LabelStudioError(
                f"{len(matches)} projects on {conn.url} are titled {title!r} (ids "
                f"{', '.join(str(p.id) for p in matches)}): rename or delete all but one in Label Studio, or set "
                "annotation.project to another title"
            )
        found.append(matches[0] if matches else None)
    return found


class ServerObject(Protocol):
    @property
    def id(self) -> int | None: ...


def server_id(obj: ServerObject) -> int:
    """The id of a project or task that Label Studio sent (the SDK's models declare every field optional)."""
    if obj.id is None:
        raise LabelStudioError(f"Label Studio sent a {type(obj).__name__} without an id")
    return obj.id
