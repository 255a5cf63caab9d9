"""Seconds from starting ``edge-awq chat SHARD_DIR --prompt ...`` to its first answer byte.

    python tools/cold_start.py SHARD_DIR [extra chat options]

Runs the command as a user would (a new process: Python start, imports, CUDA init, loading with
hash checks, kernel compilation or cache, graph capture, prefill) and timestamps the first byte
of the answer on stdout.
"""

from __future__ import annotations

import subprocess
import sys
import time


def main() -> None:
    cmd = [sys.executable, "-m", "edge_awq", "chat", sys.argv[1], "--prompt", "Hello", "--max-new-tokens", "4",
           "--temperature", "0", *sys.argv[2:]]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_line = p.stdout.readline()  # the echoed "> Hello"
    p.stdout.read(1)
    t_first = time.perf_counter() - t0
    rest, err = p.communicate()
    print(f"first token after {t_first:.2f} s (process exit after {time.perf_counter() - t0:.2f} s); "
          f"echo {first_line.strip()!r}, rc {p.returncode}")
    sys.stderr.write(err.decode()[-2000:])


if __name__ == "__main__":
    main()
