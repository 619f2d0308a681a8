"""What the stage markers' checksums cost (selftrain/loop/stages.py): xxh3-64 of a file right after
it was written (from the page cache, as run_stage hashes a finished stage), next to the cost of
writing that file, and a cold re-read's hashing as a resume verifies it.

    python tools/bench_checksums.py [--gib 2] [--dir /tmp]

Prints seconds per GiB for writing (with fsync), hashing from the page cache, and the ratio
hash / write: the fraction of a stage's own write time that guarding it adds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from selftrain.loop.stages import file_checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="file size in GiB")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the test file")
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    block = os.urandom(1 << 24)  # 16 MiB of random bytes, written repeatedly
    path = Path(args.dir) / f".bench_checksums_{os.getpid()}.bin"
    try:
        start = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(size // len(block)):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        write_s = time.perf_counter() - start
        hashes = []
        for _ in range(3):
            start = time.perf_counter()
            file_checksum(path)
            hashes.append(time.perf_counter() - start)
        hash_s = min(hashes)
        gib = path.stat().st_size / (1 << 30)
        print(f"file {gib:.2f} GiB in {args.dir}")
        print(f"write + fsync       {write_s / gib:6.3f} s/GiB")
        print(f"xxh3-64 (page cache) {hash_s / gib:6.3f} s/GiB  ({gib / hash_s:.2f} GiB/s)")
        print(f"ratio hash / write  {hash_s / write_s:6.3f}")
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
