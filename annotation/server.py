"""A local Label Studio server for the experts, in its own virtual environment.

Label Studio pins about twenty Django packages, so it lives in `.venv-labelstudio`
(installed on first use), never in the project venv. Its data dir is inside the
project (`.labelstudio/`, git-ignored); local-file serving is rooted at the folder
that holds the crawl, so tasks can point at `/data/local-files/?d=crawl/<batch>/<file>`.
The admin user and API token come from the environment and are never written to
the repository or printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_VENV = Path(".venv-labelstudio")
DEFAULT_DATA_DIR = Path(".labelstudio")
CREDENTIAL_ENV = ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY")
# Label Studio also reads these unprefixed names; a stray PORT or HOST in a shell would redirect it.
UNPREFIXED_ENV = ("PORT", "HOST", "USERNAME", "PASSWORD", "DATA_DIR")


@dataclass(frozen=True)
class ServerSettings:
    port: int
    data_dir: Path
    document_root: Path
    venv: Path = DEFAULT_VENV

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def ensure_installed(venv: Path = DEFAULT_VENV) -> Path:
    """Path of the `label-studio` executable, installing it into `venv` the first time (~2 min).

    A stamp file marks a finished install, so an interrupted one is redone, not half-used.
    """
    exe, stamp = venv / "bin" / "label-studio", venv / ".installed"
    if stamp.exists() and exe.exists():
        return exe
    print(f"installing Label Studio {LABEL_STUDIO_VERSION} into {venv} (first use only, ~2 minutes)...", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"label-studio=={LABEL_STUDIO_VERSION}"], check=True)
    stamp.write_text(LABEL_STUDIO_VERSION + "\n")
    return exe


def credentials() -> dict[str, str]:
    missing = [name for name in CREDENTIAL_ENV if not os.environ.get(name)]
    if missing:
        raise SystemExit(
            f"serve: set {', '.join(missing)} in the environment first (the admin e-mail, a password and the API "
            "token the pipeline will use; e.g. LABEL_STUDIO_API_KEY=$(python -c 'import secrets; print(secrets.token_hex(20))'))"
        )
    return {name: os.environ[name] for name in CREDENTIAL_ENV}


def server_environment(settings: ServerSettings, creds: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNPREFIXED_ENV}
    env.update(
        LABEL_STUDIO_USERNAME=creds["LABEL_STUDIO_USERNAME"],
        LABEL_STUDIO_PASSWORD=creds["LABEL_STUDIO_PASSWORD"],
        LABEL_STUDIO_USER_TOKEN=creds["LABEL_STUDIO_API_KEY"],
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",  # must hold at the FIRST start, else the preset token gets 401
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(settings.document_root.resolve()),
        LABEL_STUDIO_BASE_DATA_DIR=str(settings.data_dir.resolve()),
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
    )
    return env


def start(settings: ServerSettings, creds: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
    """Start the server in the background; returns once it answers /health."""
    exe = ensure_installed(settings.venv)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_path or settings.data_dir / "server.log", "ab")
    process = subprocess.Popen(
        [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(settings.port), "--data-dir", str(settings.data_dir.resolve())],
        env=server_environment(settings, creds),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until_healthy(settings.url, process, timeout_s=240)
    return process


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with code {process.returncode} while starting; see its log in the data dir")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"Label Studio at {url} did not answer /health within {timeout_s:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
