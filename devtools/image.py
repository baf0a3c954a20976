"""Build the container image with podman from wheels built on the host, cached by content.

There is no Docker engine here and no registry to pull ``python:3.11-slim`` from, so the tests
build the real ``Dockerfile`` with podman on a local base: Debian bookworm's Python 3.11, made by
``debootstrap`` from the Debian mirror apt already uses. See docs/deployment.md (Container
image) and the podman flags every call needs on these machines (:data:`PODMAN`, :data:`LIMITS`).

Everything heavy is cached under ``$KLAG_IMAGE_CACHE`` (default ``~/.cache/klag-pipeline/image``):

- ``klag-base-bookworm.tar``: the debootstrap root filesystem, imported into podman's storage as
  :data:`BASE_TAG` when that image is missing;
- ``wheels/``: every wheel pip downloaded or built (dependencies and the hatchling build
  backend), so a second build resolves offline;
- the image itself stays in podman's storage, tagged ``localhost/klag-pipeline:ctx-<hash>``,
  where the hash covers the whole build context (Dockerfile, .dockerignore, every wheel, byte
  for byte), the base image id and the build arguments: an unchanged context reuses the tag.

The project wheel is byte-reproducible (hatchling honours ``SOURCE_DATE_EPOCH``, fixed here);
dependencies are pinned to what the running interpreter has installed (``pip freeze`` as pip
constraints), i.e. the versions the test suite passed with.

    python -m devtools.image wheels dist/wheels   # what `docker build .` expects in dist/wheels
    python -m devtools.image wheels dist/wheels --arch aarch64   # + linux/arm64
    python -m devtools.image base                 # the debootstrap base (cached)
    python -m devtools.image build                # base + wheels + podman build (cached)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools import user_cache

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
WHEELS_IN_CONTEXT = Path("dist") / "wheels"
"""Where the Dockerfile's install step finds the wheels, relative to the build context."""

PODMAN: tuple[str, ...] = ("podman", "--runtime", "runc", "--cgroup-manager=cgroupfs")
"""crun refuses the host's hybrid cgroup layout; runc with cgroupfs works."""
LIMITS: tuple[str, ...] = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1024:1024")
"""podman's default rlimits exceed the sandbox's hard limits: every build and run passes these."""
RUN_FLAGS: tuple[str, ...] = ("--network", "host", *LIMITS)
"""No bridge networking here: containers share the host's loopback."""

DEBIAN_SUITE = "bookworm"
BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
BASE_TAG = f"localhost/klag-base:{DEBIAN_SUITE}-py311"
IMAGE_REPOSITORY = "localhost/klag-pipeline"
KEEP_IMAGES = 3
"""Context-hash tags kept in podman's storage; older ones are removed after a build."""

SOURCE_DATE_EPOCH = "315532800"
"""1980-01-01, the earliest date a zip can hold: the project wheel's timestamps."""

DEBOOTSTRAP_TIMEOUT_SECONDS = 1800.0
PIP_TIMEOUT_SECONDS = 900.0
BUILD_TIMEOUT_SECONDS = 1200.0
PODMAN_TIMEOUT_SECONDS = 300.0


class ImageError(RuntimeError):
    """The image (or its base, or its wheels) could not be built."""


def cache_dir() -> Path:
    """``$KLAG_IMAGE_CACHE`` or ``~/.cache/klag-pipeline/image``."""
    return user_cache("KLAG_IMAGE_CACHE", "image")


def package_version(root: Path = ROOT) -> str:
    """``[project].version``: the one version, which the image's label and install pin carry."""
    with (root / "pyproject.toml").open("rb") as handle:
        version = tomllib.load(handle)["project"]["version"]
    assert isinstance(version, str)
    return version


def _run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{' '.join(argv)} did not finish within {timeout:g}s") from exc
    if check and result.returncode != 0:
        raise ImageError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-4000:]}"
            f"\n{result.stderr[-4000:]}"
        )
    return result


def podman(*args: str, timeout: float = PODMAN_TIMEOUT_SECONDS, check: bool = True) -> str:
    """Run ``podman <global flags> args`` and return its stdout."""
    return _run([*PODMAN, *args], timeout=timeout, check=check).stdout


def image_exists(reference: str) -> bool:
    return _run([*PODMAN, "image", "exists", reference], timeout=60, check=False).returncode == 0


def image_id(reference: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", reference).strip()


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder at a time per cache (parallel test sessions share it)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# Base image


def debian_mirror(sources: Sequence[Path] | None = None) -> str:
    """The Debian mirror apt on this machine uses for the main ``bookworm`` suite
    (``$KLAG_DEBIAN_MIRROR`` overrides). Reads one-line ``.list`` and deb822 ``.sources`` files."""
    configured = os.environ.get("KLAG_DEBIAN_MIRROR")
    if configured:
        return configured
    if sources is None:
        apt = Path("/etc/apt")
        sources = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, list[str]] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
                if (
                    "deb" in fields.get("types", [])
                    and DEBIAN_SUITE in fields.get("suites", [])
                    and "main" in fields.get("components", [])
                    and fields.get("uris")
                ):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if words[:1] == ["deb"] and words[2:3] == [DEBIAN_SUITE] and "main" in words[3:]:
                    return words[1]
    raise ImageError(f"no apt source serves Debian {DEBIAN_SUITE} main; set KLAG_DEBIAN_MIRROR")


def base_tarball() -> Path:
    return cache_dir() / f"klag-base-{DEBIAN_SUITE}.tar"


def ensure_base() -> str:
    """The id of :data:`BASE_TAG`, imported from the cached tarball (made by debootstrap first
    if missing)."""
    with _locked("base"):
        if image_exists(BASE_TAG):
            return image_id(BASE_TAG)
        tarball = base_tarball()
        if not tarball.is_file():
            if shutil.which("debootstrap") is None:
                raise ImageError("debootstrap is not installed (make system-deps installs it)")
            _debootstrap(tarball)
        podman("import", str(tarball), BASE_TAG, timeout=600)
        return image_id(BASE_TAG)


def _debootstrap(tarball: Path) -> None:
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        try:
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    DEBIAN_SUITE,
                    str(rootfs),
                    mirror,
                ],
                timeout=DEBOOTSTRAP_TIMEOUT_SECONDS,
            )
        finally:
            # debootstrap mounts /proc and /sys inside while it installs; a failed run can leave
            # them mounted, and removing the scratch directory must not descend into them.
            for mounted in ("proc", "sys", "dev/pts"):
                target = rootfs / mounted
                if _run(["mountpoint", "-q", str(target)], timeout=30, check=False).returncode == 0:
                    _run(["umount", "--lazy", str(target)], timeout=60, check=False)
        # Package caches and lists have no place in an image.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = tarball.with_suffix(".tar.partial")
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
        partial.replace(tarball)


# ----------------------------------------------------------------------------------------------
# Wheels


def wheel_cache() -> Path:
    return cache_dir() / "wheels"


def _pip_env(*, offline: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # In the environment, not only on the command line: pip's isolated build environment (the
    # hatchling backend) reads these too.
    env["PIP_FIND_LINKS"] = str(wheel_cache())
    if offline:
        env["PIP_NO_INDEX"] = "1"
    else:
        env.pop("PIP_NO_INDEX", None)
    return env


def _constraints(directory: Path, python: str) -> Path:
    """``pip freeze`` of ``python`` (editable installs left out) as a constraints file."""
    frozen = _run(
        [python, "-m", "pip", "freeze", "--exclude-editable"], timeout=PIP_TIMEOUT_SECONDS
    ).stdout
    path = directory / "constraints.txt"
    lines = [line for line in frozen.splitlines() if "==" in line and " @ " not in line]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_wheels(
    dest: Path,
    *,
    python: str = sys.executable,
    source: Path = ROOT,
    extra_architectures: Sequence[str] = (),
) -> list[Path]:
    """The project wheel and a wheel of every runtime dependency in ``dest`` (emptied first).

    Offline from :func:`wheel_cache` when it has everything; otherwise pip fills the cache from
    the index once and the offline pass is repeated, so what is installed came from the cache.
    ``extra_architectures`` (``aarch64``) add the binary dependency wheels of other machines from
    the index, for a multi-arch build: pip in the image picks the one matching its platform from
    the same directory. Same pins; any manylinux tag the bookworm glibc (2.36) runs.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    wheel_cache().mkdir(parents=True, exist_ok=True)
    pip = [python, "-m", "pip"]
    with tempfile.TemporaryDirectory() as scratch:
        constraints = _constraints(Path(scratch), python)
        project = [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(source)]
        if _run(
            project, timeout=PIP_TIMEOUT_SECONDS, env=_pip_env(offline=True), check=False
        ).returncode:
            _run(
                [
                    *pip,
                    "download",
                    "--quiet",
                    "--dest",
                    str(wheel_cache()),
                    _build_requirement(source),
                ],
                timeout=PIP_TIMEOUT_SECONDS,
                env=_pip_env(offline=False),
            )
            _run(project, timeout=PIP_TIMEOUT_SECONDS, env=_pip_env(offline=True))
        (own,) = dest.glob("*.whl")
        dependencies = [
            *pip,
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(dest),
            "--constraint",
            str(constraints),
            str(own),
        ]
        if _run(
            dependencies, timeout=PIP_TIMEOUT_SECONDS, env=_pip_env(offline=True), check=False
        ).returncode:
            fill = [
                *pip,
                "wheel",
                "--quiet",
                "--wheel-dir",
                str(wheel_cache()),
                "--constraint",
                str(constraints),
                str(own),
            ]
            _run(fill, timeout=PIP_TIMEOUT_SECONDS, env=_pip_env(offline=False))
            # The cache holds dependencies only: a project wheel there could shadow a newer one.
            (wheel_cache() / own.name).unlink(missing_ok=True)
            _run(dependencies, timeout=PIP_TIMEOUT_SECONDS, env=_pip_env(offline=True))
        for architecture in extra_architectures:
            platforms = [f"--platform=manylinux2014_{architecture}"] + [
                f"--platform=manylinux_2_{minor}_{architecture}" for minor in range(17, 37)
            ]
            _run(
                [
                    *pip,
                    "download",
                    "--quiet",
                    "--only-binary=:all:",
                    *platforms,
                    "--python-version=3.11",
                    "--implementation=cp",
                    "--dest",
                    str(dest),
                    "--constraint",
                    str(constraints),
                    str(own),
                ],
                timeout=PIP_TIMEOUT_SECONDS,
                env=_pip_env(offline=False),
            )
    return sorted(dest.glob("*.whl"))


def _build_requirement(source: Path) -> str:
    with (source / "pyproject.toml").open("rb") as handle:
        (requirement,) = tomllib.load(handle)["build-system"]["requires"]
    assert isinstance(requirement, str)
    return requirement


# ----------------------------------------------------------------------------------------------
# Build context and image


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    base_id: str
    context_hash: str
    size_bytes: int
    built: bool
    """False when the tag already existed and was reused."""
    seconds: float
    """Wall time of :func:`build_image`, cached or not."""


def assemble_context(context: Path, *, python: str = sys.executable) -> list[Path]:
    """The build context ``docker build .`` would see after ``python -m devtools.image wheels
    dist/wheels``: the Dockerfile, .dockerignore and the wheels, nothing else."""
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy2(DOCKERFILE, context / "Dockerfile")
    shutil.copy2(DOCKERIGNORE, context / ".dockerignore")
    return build_wheels(context / WHEELS_IN_CONTEXT, python=python)


def context_hash(context: Path, base_id: str, build_args: dict[str, str]) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in context.rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(base_id.encode() + b"\0")
    digest.update(json.dumps(build_args, sort_keys=True).encode())
    return digest.hexdigest()


def image_size(reference: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", reference).strip())


def build_image(*, python: str = sys.executable) -> BuiltImage:
    """Build (or reuse, by context hash) the image on the local debootstrap base."""
    started = time.monotonic()
    base_id = ensure_base()
    build_args = {"BASE_IMAGE": BASE_TAG, "VERSION": package_version()}
    with _locked("build"), tempfile.TemporaryDirectory(prefix="klag-image-context-") as scratch:
        context = Path(scratch)
        assemble_context(context, python=python)
        content = context_hash(context, base_id, build_args)
        tag = f"{IMAGE_REPOSITORY}:ctx-{content[:16]}"
        built = not image_exists(tag)
        if built:
            # --no-cache: buildah keys a cached RUN layer by its command line, not by the content
            # of the bind-mounted wheels, so a changed wheel reused the layer of an older one (an
            # image without the sharding code once answered "exporter.sharding: unknown key").
            # The tag above already caches by the context's content.
            argv = [
                "build",
                "--no-cache",
                "--network",
                "host",
                *LIMITS,
                "--format",
                "docker",
                "--pull=never",
            ]
            for key, value in build_args.items():
                argv += ["--build-arg", f"{key}={value}"]
            argv += ["--tag", tag, "--file", str(context / "Dockerfile"), str(context)]
            podman(*argv, timeout=BUILD_TIMEOUT_SECONDS)
            _prune_old_images(keep=tag)
    return BuiltImage(
        tag=tag,
        image_id=image_id(tag),
        base_id=base_id,
        context_hash=content,
        size_bytes=image_size(tag),
        built=built,
        seconds=time.monotonic() - started,
    )


def _prune_old_images(keep: str) -> None:
    listing = podman(
        "images",
        "--filter",
        f"reference={IMAGE_REPOSITORY}",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.CreatedAt}}",
    )
    tags = [line.split(" ", 1) for line in listing.splitlines() if ":ctx-" in line]
    tags.sort(key=lambda item: item[1], reverse=True)
    for tag, _ in tags[KEEP_IMAGES:]:
        if tag != keep:
            # An image a running container (another test session) uses stays: rmi refuses.
            podman("rmi", tag, check=False)


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.image", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    wheels = commands.add_parser("wheels", help="build the project and dependency wheels into DEST")
    wheels.add_argument("dest", type=Path, nargs="?", default=ROOT / WHEELS_IN_CONTEXT)
    wheels.add_argument(
        "--arch",
        action="append",
        default=[],
        help="also the binary wheels for this machine (repeatable), e.g. aarch64 for linux/arm64",
    )
    commands.add_parser("base", help="make (or reuse) the debootstrap base image")
    commands.add_parser("build", help="build (or reuse) the image; prints its tag and size")
    args = parser.parse_args(argv)
    try:
        if args.command == "wheels":
            for wheel in build_wheels(args.dest, extra_architectures=args.arch):
                print(wheel)
        elif args.command == "base":
            print(BASE_TAG, ensure_base())
        else:
            image = build_image()
            state = "built" if image.built else "reused"
            print(
                f"{image.tag} {state} in {image.seconds:.1f}s, "
                f"{image.size_bytes / 1e6:.1f} MB, id {image.image_id[:12]}"
            )
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
