#!/usr/bin/env python3
"""Do two files' syncs stall together? (benches/README.md, "What the disk allows")

Two threads each append 300 bytes to a file of their own and call fdatasync in a loop for a few
seconds, while HOGS other processes spin on the CPUs. For each file it prints the share of the
wall time during which its sync in flight still has more than 5 ms to go (as fsync_stalls.py
does for one file), and the share during which both files' syncs do at once: what a daemon that
wrote its audit records to whichever of two logs was free would still wait on.

    python3 benches/fsync_pair.py [HOGS] [SECONDS] [DIR]     # defaults: 1 3 the current directory
"""
import os
import sys
import threading
import time

from fsync_stalls import start_hogs  # beside this file


def main():
    hogs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    directory = sys.argv[3] if len(sys.argv) > 3 else "."
    children = start_hogs(hogs, seconds)
    begun = time.perf_counter()
    windows = {}

    def sync_loop(i):
        path = os.path.join(directory, f"fsync_pair.{os.getpid()}.{i}.tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        mine = []
        try:
            while time.perf_counter() - begun < seconds:
                os.write(fd, b"x" * 300)
                start = time.perf_counter()
                os.fdatasync(fd)
                end = time.perf_counter()
                # A record arriving in [start, end - 5 ms] waits over 5 ms for this sync.
                if end - start > 0.005:
                    mine.append((start, end - 0.005))
        finally:
            os.close(fd)
            os.unlink(path)
        windows[i] = mine

    threads = [threading.Thread(target=sync_loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begun
    for pid in children:
        os.waitpid(pid, 0)
    share = lambda spans: 100 * sum(b - a for a, b in spans) / wall
    both = [
        (max(a1, a2), min(b1, b2))
        for a1, b1 in windows[0]
        for a2, b2 in windows[1]
        if min(b1, b2) > max(a1, a2)
    ]
    print(
        f"{hogs} hogs: over 5 ms of a sync still to go: file A {share(windows[0]):.2f}%, "
        f"file B {share(windows[1]):.2f}%, both at once {share(both):.2f}% of {wall:.1f} s"
    )


if __name__ == "__main__":
    main()
