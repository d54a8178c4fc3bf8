"""How the test node agent runs a container: the `Runner` interface and the
local-process runner.

The local runner ignores the image and runs the container's command + args as
a subprocess on this machine, with the environment the pod spec resolves to.
A second runner (e.g. podman running the real image) only has to implement
`Runner.start` and `RunningContainer`; the node agent does the rest.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# The kubelet caps a termination message at 4096 bytes; log fallback at 2048 / 80 lines.
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_BYTES = 2048
FALLBACK_LOG_LINES = 80

# The feedline subscriber writes its termination message to the path in this
# variable (default /dev/termination-log); the local runner points it at a file
# of its own because /dev is not writable here.
TERMINATION_LOG_ENV = "FEEDLINE_TERMINATION_LOG"

# Only these variables of the test process leak into a container, to keep
# containers about as isolated from the test runner's environment as real ones.
_INHERITED_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class ContainerRun:
    """Everything a runner needs to start one container of one pod."""

    namespace: str
    pod_name: str
    pod_uid: str
    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    working_dir: str | None
    termination_message_path: str
    termination_message_policy: str


@dataclass(frozen=True)
class ContainerExit:
    exit_code: int
    reason: str
    message: str
    started_at: datetime.datetime
    finished_at: datetime.datetime


class ContainerStartError(RuntimeError):
    """The container could not be started (kubelet: StartError, exit code 128)."""


class RunningContainer(Protocol):
    container_id: str
    started_at: datetime.datetime
    log_path: Path

    def poll(self) -> ContainerExit | None:
        """The exit, once the container has exited; None while it runs."""

    def terminate(self, grace_seconds: float) -> ContainerExit:
        """Stop it (SIGTERM, then SIGKILL after the grace period)."""


class Runner(Protocol):
    def start(self, run: ContainerRun, workdir: Path) -> RunningContainer:
        """Start the container; `workdir` is an empty folder it may use."""


def _termination_message(message_file: Path, log_path: Path, policy: str, exit_code: int) -> str:
    try:
        message = message_file.read_bytes()[:MAX_MESSAGE_BYTES].decode(errors="replace")
    except FileNotFoundError:
        message = ""
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
        try:
            lines = log_path.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
        except FileNotFoundError:
            lines = []
        message = b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
    return message


class LocalProcess:
    """A container that is a process group on this machine."""

    def __init__(
        self,
        run: ContainerRun,
        process: subprocess.Popen[bytes],
        message_file: Path,
        log_path: Path,
    ) -> None:
        self._run = run
        self._process = process
        self._message_file = message_file
        self.log_path = log_path
        self.container_id = f"local://{process.pid}"
        self.started_at = now()
        self._exit: ContainerExit | None = None

    def poll(self) -> ContainerExit | None:
        if self._exit is None:
            code = self._process.poll()
            if code is not None:
                self._exit = self._make_exit(code)
        return self._exit

    def _make_exit(self, returncode: int) -> ContainerExit:
        # A signal death shows as 128+signal, as container runtimes report it.
        exit_code = 128 - returncode if returncode < 0 else returncode
        return ContainerExit(
            exit_code=exit_code,
            reason="Completed" if exit_code == 0 else "Error",
            message=_termination_message(
                self._message_file,
                self.log_path,
                self._run.termination_message_policy,
                exit_code,
            ),
            started_at=self.started_at,
            finished_at=now(),
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, sig)

    def terminate(self, grace_seconds: float) -> ContainerExit:
        if self._process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._process.wait()
        # Children left in the group (e.g. from `sh -c`) go too.
        self._signal_group(signal.SIGKILL)
        exit_ = self.poll()
        assert exit_ is not None
        return exit_


class LocalProcessRunner:
    """Runs command + args as a local subprocess; the image is ignored.

    PATH starts with the directory of the running Python, so a pod whose
    command is a console script of this virtualenv (`feedline ...`) runs it.
    """

    def __init__(self, extra_path: list[str] | None = None) -> None:
        base = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        self._path = os.pathsep.join([*(extra_path or []), str(Path(sys.executable).parent), base])

    def start(self, run: ContainerRun, workdir: Path) -> RunningContainer:
        if not run.command:
            raise ContainerStartError(
                f"container {run.name!r} has no command: the local runner cannot use "
                f"the entrypoint of image {run.image!r}"
            )
        message_file = workdir / "termination-log"
        message_file.touch()
        log_path = workdir / "output.log"
        env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
        env.update({"PATH": self._path, "HOSTNAME": run.pod_name})
        env.update(run.env)
        env[TERMINATION_LOG_ENV] = str(message_file)
        executable = shutil.which(run.command[0], path=env.get("PATH", self._path))
        if executable is None:
            raise ContainerStartError(
                f'exec: "{run.command[0]}": executable file not found in $PATH'
            )
        cwd = run.working_dir if run.working_dir and Path(run.working_dir).is_dir() else workdir
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [executable, *run.command[1:]],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group, so the whole tree can be signalled.
                start_new_session=True,
            )
        return LocalProcess(run, process, message_file, log_path)


def wait_for_exit(container: RunningContainer, timeout: float) -> ContainerExit | None:
    """Poll helper for tests and the agent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = container.poll()
        if result is not None:
            return result
        time.sleep(0.05)
    return container.poll()
