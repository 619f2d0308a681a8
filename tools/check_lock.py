"""Check that this Python environment holds exactly the versions of a lock file.

Usage: python tools/check_lock.py [--sync] requirements/lock-cpu.txt

Every `name==version` line of the lock must be installed at that version (PEP 440 `==`, so a lock
line `torch==2.13.0` accepts the CPU build `2.13.0+cpu`), and nothing else may be installed but
the project itself (`selftrain`, editable) and what the installed torch build itself requires (a
machine without the CPU wheel gets PyPI's CUDA build, whose nvidia-* libraries come with it and
are its own business). Exits 1 naming every difference. `--sync` first
uninstalls what the lock does not name (what an older install of the venv left behind).
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

OWN = {"selftrain"}


def read_lock(path: Path) -> dict[str, Requirement]:
    pinned: dict[str, Requirement] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise SystemExit(f"{path}:{number}: not a requirement line ({e}): {raw!r}") from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise SystemExit(f"{path}:{number}: a lock line pins one exact version (name==version): {raw!r}")
        pinned[canonicalize_name(req.name)] = req
    return pinned


def installed_versions() -> dict[str, str]:
    installed = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            installed[canonicalize_name(name)] = dist.version
    return installed


def torch_stack() -> set[str]:
    """The installed packages that the installed torch requires, transitively (markers evaluated)."""
    seen: set[str] = set()
    todo = ["torch"]
    while todo:
        name = todo.pop()
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            key = canonicalize_name(req.name)
            if key not in seen:
                seen.add(key)
                todo.append(key)
    return seen


def unlocked(lock: dict[str, Requirement]) -> list[str]:
    """Installed packages the lock does not name (the project and torch's own stack aside)."""
    return sorted(set(installed_versions()) - set(lock) - OWN - torch_stack())


def differences(lock: dict[str, Requirement]) -> list[str]:
    installed = installed_versions()
    out = []
    for name, req in sorted(lock.items()):
        if req.marker is not None and not req.marker.evaluate():
            continue
        if name not in installed:
            out.append(f"{name}: locked {req.specifier}, not installed")
        elif not req.specifier.contains(installed[name], prereleases=True):
            out.append(f"{name}: locked {req.specifier}, installed {installed[name]}")
    for name in unlocked(lock):
        out.append(f"{name}: installed {installed[name]}, not in the lock")
    return out


def main(argv: list[str]) -> int:
    args = argv[1:]
    sync = "--sync" in args
    args = [a for a in args if a != "--sync"]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    path = Path(args[0])
    if sync:
        extra = unlocked(read_lock(path))
        if extra:
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *extra], check=True)
    found = differences(read_lock(path))
    if found:
        print(f"this environment differs from {path}:", *found, sep="\n  ", file=sys.stderr)
        return 1
    print(f"environment matches {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
