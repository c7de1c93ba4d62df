"""Run one command and record its wall time and peak resident memory (for bench.convert).

    python bench/_peak_rss.py RESULT_JSON COMMAND [ARGS...]

COMMAND[0] must be an absolute path. It inherits this process's working directory, environment and
output streams; when it ends, RESULT_JSON (unless it is "-") gets `{"seconds": wall time, "peak_kib":
its ru_maxrss}` and this process exits with its exit code (128 + N if signal N ended it). The benches
also start their per-case processes through it (`launched`), so the peak those report of themselves
(`getrusage(RUSAGE_SELF)`) is theirs alone.

Why a separate small process: Linux carries a process's peak RSS across exec (a new program starts
from the peak of the process it replaced), and a child made by fork or vfork starts from its parent's
memory. Started straight from a benchmark that holds models in memory, a command would report at least
the benchmark's size. Started from here, it starts from this script's few megabytes, so its
`ru_maxrss` (from `os.wait4`, this one child's own) is the program's peak. Imports nothing heavy.
"""
import json
import os
import sys
import time


def launched(cmd: list[str], result: str = "-") -> list[str]:
    """`cmd` (COMMAND[0] absolute) started through this launcher instead of straight from the caller."""
    return [sys.executable, os.path.abspath(__file__), result, *cmd]


def main(argv: list[str]) -> int:
    result, cmd = argv[0], argv[1:]
    start = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, os.environ)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - start
    if result != "-":
        with open(result, "w") as f:
            json.dump({"seconds": elapsed, "peak_kib": usage.ru_maxrss}, f)  # Linux: ru_maxrss in KiB
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
