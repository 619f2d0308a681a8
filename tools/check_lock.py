"""Check that this Python environment holds exactly the versions of a lock file.

Usage: python tools/check_lock.py [--sync] requirements/lock-cpu.txt

Every `name==version` line of the lock must be installed at that version (PEP 440 `==`, so a lock
line `torch==2.13.0` accepts the CPU build `2.13.0+cpu`), and nothing else may be installed but
the project itself (`selftrain`, editable). Exits 1 naming every difference. `--sync` first
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
    for name in sorted(set(installed) - set(lock) - OWN):
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
        extra = sorted(set(installed_versions()) - set(read_lock(path)) - OWN)
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
