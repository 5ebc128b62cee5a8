"""A local Label Studio server for the experts, in its own virtual environment.

Label Studio pins about twenty Django packages, so it lives in `.venv-labelstudio`
(installed on first use), never in the project venv. Its data dir is inside the
project (`.labelstudio/`, git-ignored); local-file serving is rooted at the folder
that holds the crawl, so tasks can point at `/data/local-files/?d=crawl/<batch>/<file>`.
The admin user and API token come from the environment and are never written to
the repository or printed. Label Studio applies them only at the first start on a data
dir, when it creates the user; later starts keep the first ones, so `serve` checks the
token it was given against the running server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from common.processes import end_with_parent

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_VENV = Path(".venv-labelstudio")
DEFAULT_DATA_DIR = Path(".labelstudio")
CREDENTIAL_ENV = ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY")
# Label Studio also reads these unprefixed names; a stray PORT or HOST in a shell would redirect it.
UNPREFIXED_ENV = ("PORT", "HOST", "USERNAME", "PASSWORD", "DATA_DIR")
# Label Studio applies a preset token only when it is longer than this; it ignores a shorter one (and logs it).
IGNORED_TOKEN_LENGTH = 5
START_TIMEOUT_S = 240


class ServerError(RuntimeError):
    """`serve` could not install, start or use the local Label Studio; the message says why and what to do."""


@dataclass(frozen=True)
class ServerSettings:
    port: int
    data_dir: Path
    document_root: Path
    venv: Path = DEFAULT_VENV

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"


def ensure_installed(venv: Path = DEFAULT_VENV) -> Path:
    """Path of the `label-studio` executable, installing it into `venv` the first time (~2 min).

    A stamp file marks a finished install, so an interrupted one is redone, not half-used.
    """
    exe, stamp = venv / "bin" / "label-studio", venv / ".installed"
    if stamp.exists() and exe.exists():
        return exe
    print(
        f"installing Label Studio {LABEL_STUDIO_VERSION} into {venv} (first use only, ~2 minutes)...", file=sys.stderr
    )
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ServerError(
            f"could not create the virtual environment {venv} for Label Studio ({exc}); check that `{sys.executable} "
            "-m venv` works"
        ) from None
    requirement = f"label-studio=={LABEL_STUDIO_VERSION}"
    try:
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", requirement], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ServerError(
            f"pip could not install {requirement} into {venv} ({exc}; pip's message is above). Usually there is no "
            "package index: set PIP_INDEX_URL to your mirror, or install from a wheelhouse (a folder with the wheels "
            "of label-studio and its dependencies) with PIP_NO_INDEX=1 PIP_FIND_LINKS=<folder>; then run `serve` again"
        ) from None
    stamp.write_text(LABEL_STUDIO_VERSION + "\n")
    return exe


def credentials() -> dict[str, str]:
    """The admin e-mail, password and API token from the environment, checked before anything starts."""
    token_hint = "e.g. LABEL_STUDIO_API_KEY=$(python -c 'import secrets; print(secrets.token_hex(20))')"
    missing = [name for name in CREDENTIAL_ENV if not os.environ.get(name)]
    if missing:
        raise ServerError(
            f"set {', '.join(missing)} in the environment first (the admin e-mail, a password and the API token the "
            f"pipeline will use; {token_hint})"
        )
    if len(os.environ["LABEL_STUDIO_API_KEY"]) <= IGNORED_TOKEN_LENGTH:
        raise ServerError(
            f"LABEL_STUDIO_API_KEY must be longer than {IGNORED_TOKEN_LENGTH} characters: Label Studio ignores a "
            f"shorter preset token (and writes it into its log), so push and pull would be refused; {token_hint}"
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


def ensure_port_free(port: int) -> None:
    """Refuse a taken port: Label Studio would silently move to the next free one while serve waited on (and printed)
    this one."""
    with socket.socket() as probe:
        probe.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # a stopped server's TIME_WAIT connections do not count
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ServerError(
                f"port {port} in use (an earlier `serve`?): stop it or use --port / annotation.port"
            ) from None


def start(settings: ServerSettings, creds: dict[str, str]) -> subprocess.Popen:
    """Start the server in the background; returns once it answers /health.

    The server runs in a session of its own, out of reach of the terminal's signals, so
    whatever ends the wait (a failed start, the timeout, Ctrl-C) stops it here; otherwise
    it would keep running, orphaned, and hold the port. On Linux it also ends when serve
    is killed outright (SIGKILL, the out-of-memory killer): `end_with_parent`.
    """
    exe = ensure_installed(settings.venv)
    ensure_port_free(settings.port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.log_path, "ab") as log:
        process = subprocess.Popen(
            [
                str(exe),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "-p",
                str(settings.port),
                "--data-dir",
                str(settings.data_dir.resolve()),
            ],
            env=server_environment(settings, creds),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=end_with_parent,  # common/processes.py: Linux only
        )
    try:
        wait_until_healthy(settings, process, timeout_s=START_TIMEOUT_S)
    except BaseException:
        stop(process)
        raise
    return process


def wait_until_healthy(settings: ServerSettings, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(
                f"Label Studio exited with {exit_status(process)} while starting; its log says why: {settings.log_path}"
            )
        try:
            if httpx.get(f"{settings.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise ServerError(
        f"Label Studio at {settings.url} did not answer /health within {timeout_s:.0f} s, so it was stopped; see its "
        f"log {settings.log_path}"
    )


def exit_status(process: subprocess.Popen) -> str:
    """'code N', or the signal that ended the process ('signal SIGKILL': e.g. the kernel's out-of-memory killer)."""
    code = process.returncode
    if code >= 0:
        return f"code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name in the enum
        return f"signal {-code}"


def check_token(settings: ServerSettings, token: str) -> None:
    """Fail unless the server accepts `token`.

    Label Studio applies the preset token (and password) only when it creates the
    admin user, at the first start on a data dir; later starts keep the old ones, so
    a changed LABEL_STUDIO_API_KEY would otherwise surface only as 401s in push and pull.
    """
    url = f"{settings.url}/api/current-user/whoami"
    try:
        status = httpx.get(url, headers={"Authorization": f"Token {token}"}, timeout=30).status_code
    except httpx.HTTPError as exc:
        raise ServerError(f"Label Studio did not answer {url} ({exc}); see its log {settings.log_path}") from None
    if status in (401, 403):
        raise ServerError(
            f"Label Studio refused LABEL_STUDIO_API_KEY: this server's database ({settings.data_dir}) was created with "
            "another API key, and Label Studio keeps the key (and password) of its first start. Use that key, or "
            f"remove {settings.data_dir}/ to start afresh (that deletes its projects and labels: `python -m annotation "
            "pull` them first, with the old key)"
        )
    if status != 200:
        raise ServerError(f"Label Studio answered HTTP {status} to {url}; see its log {settings.log_path}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
