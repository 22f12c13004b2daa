"""The container engine the deployment tests drive: podman + podman-compose when present, else Docker
with its compose plugin. ``find_engine`` returns ``None`` (with the reason) where neither works."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
BUILD_FLAGS_ENV = "STINGY_CONTAINER_BUILD_FLAGS"  # extra `build` flags, e.g. volumes for a local package mirror
BASE_IMAGE_ENV = "STINGY_BASE_IMAGE"  # --build-arg BASE_IMAGE (a local stand-in where Docker Hub is unreachable)


class EngineError(RuntimeError):
    """A command of the engine failed; the message holds the command and the end of its output."""


@dataclass(frozen=True)
class Engine:
    """One container engine: ``cli`` runs images, ``compose`` runs compose files."""

    cli: str
    compose: tuple[str, ...]

    def run(self, args: list[str], timeout_s: float, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command (stdout and stderr together); raise ``EngineError`` when ``check`` and it fails."""
        done = subprocess.run(args, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout_s)
        if check and done.returncode != 0:
            raise EngineError(f"{shlex.join(args)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
        return done

    def build(self, tag: str, context: Path = REPO, timeout_s: float = 1800) -> float:
        """Build docker/Dockerfile from ``context`` as ``tag``; returns the seconds it took."""
        flags = shlex.split(os.environ.get(BUILD_FLAGS_ENV, ""))
        base = os.environ.get(BASE_IMAGE_ENV)
        oci = ["--format", "docker"] if self.cli == "podman" else []  # podman's default OCI format drops HEALTHCHECK
        args = [self.cli, "build", *oci, *flags, *(["--build-arg", f"BASE_IMAGE={base}"] if base else []),
                "-f", str(context / "docker" / "Dockerfile"), "-t", tag, str(context)]
        start = time.monotonic()
        self.run(args, timeout_s)
        return time.monotonic() - start

    def layers(self, tag: str) -> list[str]:
        """The image's layer digests, base first."""
        return self.run([self.cli, "image", "inspect", "--format", "{{json .RootFS.Layers}}", tag], 60).stdout.strip().strip("[]").replace('"', "").split(",")

    def compose_cmd(self, project: str, *args: str, overrides: tuple[str, ...] = ()) -> list[str]:
        """``compose`` on docker/compose.yaml merged with the ``overrides`` (file names in docker/)."""
        files = [COMPOSE_FILE, *(COMPOSE_FILE.parent / name for name in overrides)]
        return [*self.compose, "-p", project, *(arg for path in files for arg in ("-f", str(path))), *args]

    def container(self, project: str, service: str) -> str:
        """The id of the running container of ``service`` in ``project`` (compose labels it)."""
        out = self.run([self.cli, "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                        "--filter", f"label=com.docker.compose.service={service}"], 60).stdout.split()
        if len(out) != 1:
            raise EngineError(f"expected one running {service} container in {project}, found {out}")
        return out[0]

    def healthy(self, container: str) -> bool:
        """Run the image's HEALTHCHECK now (podman has no timer here) or read Docker's last result."""
        if self.cli == "podman":
            return self.run(["podman", "healthcheck", "run", container], 60, check=False).returncode == 0
        status = self.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container], 60).stdout.strip()
        return status == "healthy"

    def read_volume_file(self, volume: str, path: str, image: str) -> str:
        """The text of ``path`` inside the named volume ``volume`` (mounted at /v in a throw-away container)."""
        return self.run([self.cli, "run", "--rm", "--entrypoint", "cat", "-v", f"{volume}:/v:ro", image, f"/v/{path}"], 120).stdout


def find_engine() -> tuple[Engine | None, str]:
    """The engine to use and, when there is none, why."""
    if shutil.which("podman") and shutil.which("podman-compose"):
        engine = Engine("podman", ("podman-compose",))
    elif shutil.which("docker"):
        engine = Engine("docker", ("docker", "compose"))
    else:
        return None, "no container engine: install podman and podman-compose, or Docker with its compose plugin"
    for probe in ([engine.cli, "info"], [*engine.compose, "version"]):
        try:
            done = engine.run(probe, 120, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return None, f"{shlex.join(probe)} failed: {error}"
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return None, f"{shlex.join(probe)} failed: {lines[-1] if lines else done.returncode}"
    return engine, ""
