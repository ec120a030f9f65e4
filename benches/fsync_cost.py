#!/usr/bin/env python3
"""What one fdatasync costs here: appending to a file (as the audit log does) against overwriting
blocks written beforehand (benches/README.md, "Spaced audit syncs").

Writes SIZE bytes and calls fdatasync in a loop for SECONDS, in MODE `append` (O_APPEND, the file
grows: each sync also commits the new size through the filesystem's journal) or `overwrite` (into
a 64 MiB file written and synced first: only the data goes out). Prints the syncs' mean latency,
this process's CPU per sync, and the whole machine's busy time per sync (from /proc/stat, so the
kernel threads that do the journal's and the disk's work count too).

    python3 benches/fsync_cost.py MODE [SECONDS] [SIZE] [DIR]   # defaults: 3 6000 the current directory
"""
import os
import resource
import sys
import time


def machine_busy_ticks():
    with open("/proc/stat") as f:
        values = list(map(int, f.readline().split()[1:]))
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "append"
    if mode not in ("append", "overwrite"):
        sys.exit(f"MODE must be append or overwrite, not {mode!r}")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 6000
    directory = sys.argv[4] if len(sys.argv) > 4 else "."
    path = os.path.join(directory, f"fsync_cost.{os.getpid()}.tmp")
    if mode == "append":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.write(fd, b"\0" * (64 << 20))
        os.fsync(fd)
    try:
        data, offset, syncs = b"x" * size, 0, 0
        usage, busy, start = resource.getrusage(resource.RUSAGE_SELF), machine_busy_ticks(), time.time()
        while time.time() - start < seconds and offset + size <= 64 << 20:
            if mode == "append":
                os.write(fd, data)
            else:
                os.pwrite(fd, data, offset)
                offset += size
            os.fdatasync(fd)
            syncs += 1
        elapsed = time.time() - start
        after, busy_after = resource.getrusage(resource.RUSAGE_SELF), machine_busy_ticks()
    finally:
        os.close(fd)
        os.unlink(path)
    per = lambda x: x / syncs * 1e6
    print(
        f"{mode}, {size} bytes: {syncs} syncs, {per(elapsed):.0f} us each; this process "
        f"{per(after.ru_stime - usage.ru_stime):.1f} us system + {per(after.ru_utime - usage.ru_utime):.1f} us "
        f"user per sync; the machine busy {per((busy_after - busy) / os.sysconf('SC_CLK_TCK')):.1f} us per sync"
    )


if __name__ == "__main__":
    main()
