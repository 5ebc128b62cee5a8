"""The documentation a newcomer reads: README stays a first screen, every relative link in README.md, docs/*.md and
CHANGELOG.md resolves on a fresh clone (headings of #anchors included), and what docs/generate.py generates is
current (`make docs` rewrites it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+).+?\1")
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced and indented code blocks: where headings and links are."""
    lines, fenced, previous_blank = [], False, True
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and not (previous_blank and line.startswith("    ")):
            lines.append((number, line))
        previous_blank = not line.strip() or (previous_blank and line.startswith("    "))
    return lines


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image and every HTML src/href in a page's text."""
    return [
        (number, target)
        for number, line in prose_lines(text)
        for pattern in (MD_LINK, HTML_LINK)
        for target in pattern.findall(INLINE_CODE.sub("", line))  # a link in a code span is text
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup removed, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every #anchor a page has: its headings' slugs (repeats get -1, -2, ... as on GitHub) and HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(text):
        if heading := HEADING.match(line):
            base = slug(heading[2])
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found | set(HTML_ANCHOR.findall(text))


def dvc_files() -> list[Path]:
    """The project's *.dvc files (hidden folders such as .venv, .git and .dvc left out)."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(folder) / name for name in files if name.endswith(".dvc")]
    return found


def dvc_managed() -> list[str]:
    """Path patterns of what `dvc repro` writes (dvc.yaml's outs, metrics, plots) and what DVC tracks (*.dvc): absent
    on a fresh clone, so the documentation names them as code, `reports/index.html`, never as links."""
    patterns = []
    stages = (yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    for stage in stages.values():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind) or []:
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                patterns.append(re.sub(r"\$\{[^}]*\}", "*", str(path)).rstrip("/"))
    for tracked in dvc_files():
        for out in (yaml.safe_load(tracked.read_text(encoding="utf-8")) or {}).get("outs") or []:
            patterns.append(str((tracked.parent / out["path"]).relative_to(ROOT)))
    return patterns


def is_dvc_managed(relative: str, patterns: list[str]) -> bool:
    """The path is, or lies inside, a DVC output or tracked folder."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


def broken_links(path: Path, text: str, managed: list[str]) -> list[str]:
    """What is wrong with each relative link of the page `path` whose text is `text`, as `page:line: target: why`."""
    problems = []
    for number, target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
            continue  # https:, mailto: and other absolute URLs
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        file_part = file_part.split("?", 1)[0]
        resolved = (path.parent / file_part).resolve() if file_part else path
        try:
            relative = resolved.relative_to(ROOT).as_posix()
        except ValueError:
            problems.append(f"{where}: outside the repository (absent on a clone): write it as `code`")
            continue
        if is_dvc_managed(relative, managed):
            problems.append(f"{where}: a DVC output or tracked data, absent on a fresh clone: write it as `code`")
        elif file_part and not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(target_text(resolved, path, text)):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {relative}")
    return problems


def target_text(target: Path, page: Path, text: str) -> str:
    return text if target == page else target.read_text(encoding="utf-8")


def test_readme_is_a_first_screen():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert page.exists()
    problems = broken_links(page, page.read_text(encoding="utf-8"), dvc_managed())
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_checker_catches_what_it_should():
    """The checker itself: a missing file, a missing heading, a DVC output and a path outside the repository are
    reported; links in code are not links; GitHub's slugs for headings with punctuation and code."""
    page = ROOT / "docs" / "probe.md"  # never written: the checker is given its text
    text = (
        "# A `code` heading: with punctuation's marks\n\n## Repeat\n\n## Repeat\n\n"
        "[ok](models.md) [ok](#a-code-heading-with-punctuations-marks) [ok](#repeat-1)\n"
        "[gone](no-such-page.md) [anchor](models.md#no-such-heading) ![out](../reports/index.html)\n"
        '[outside](../../shared/reference/notes.md) <img src="missing.png">\n\n'
        "`[not a link](nowhere.md)`\n\n```\n[not a link](nowhere.md)\n```\n"
    )
    problems = broken_links(page, text, dvc_managed())
    assert [p.split(": ", 2)[1] for p in problems] == [
        "no-such-page.md",
        "models.md#no-such-heading",
        "../reports/index.html",
        "../../shared/reference/notes.md",
        "missing.png",
    ], problems


def test_generated_documentation_is_current():
    """README's pipeline picture (and whatever else docs/generate.py generates) matches the code: else `make docs`."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr + done.stdout
