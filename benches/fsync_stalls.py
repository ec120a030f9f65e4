#!/usr/bin/env python3
"""Is this machine's fdatasync stalled while its CPUs are busy? (benches/README.md, "The fsync stalls")

Appends 300 bytes and calls fdatasync in a loop for a few seconds, as the audit log's group commit
does, while HOGS other processes spin on the CPUs; prints the latency percentiles and every sync
slower than 3 ms with its start time, so a period shows.

    python3 benches/fsync_stalls.py [HOGS] [SECONDS] [DIR]     # defaults: 0 3 the current directory

On the AMD EPYC machines of issue 5, with no hog: p99 about 0.3-0.5 ms, no stall. With one hog:
a 17-23 ms sync about every 100 ms, the hypervisor's I/O path waiting for the busy VM.

It also prints a lower bound on the share of durable answers slower than 5 ms: the share of the
wall time during which the sync in flight still has more than 5 ms to go. A record that arrives
then can be durable no sooner than that sync ends (it joins the next one), so at least that share
of answers that wait for their record take over 5 ms, whatever the daemon does.
"""
import os
import sys
import time


def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass


def start_hogs(hogs, seconds):
    """Forks `hogs` processes that spin for `seconds` and a half; returns their ids."""
    children = []
    for _ in range(hogs):
        pid = os.fork()
        if pid == 0:
            spin(seconds + 0.5)
            os._exit(0)
        children.append(pid)
    time.sleep(0.2)
    return children


def main():
    hogs = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    directory = sys.argv[3] if len(sys.argv) > 3 else "."
    children = start_hogs(hogs, seconds)
    path = os.path.join(directory, f"fsync_stalls.{os.getpid()}.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start, latencies, slow = time.time(), [], []
        begun = time.perf_counter()
        while time.time() - start < seconds:
            os.write(fd, b"x" * 300)
            t = time.perf_counter()
            os.fdatasync(fd)
            ms = (time.perf_counter() - t) * 1000
            latencies.append(ms)
            if ms > 3:
                slow.append((round((time.time() - start) * 1000), round(ms, 1)))
        wall = time.perf_counter() - begun
    finally:
        os.close(fd)
        os.unlink(path)
        for pid in children:
            os.waitpid(pid, 0)
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p))]
    print(
        f"{hogs} hogs: {len(latencies)} syncs; p50 {pct(0.5):.3f} ms, p99 {pct(0.99):.2f} ms, "
        f"max {latencies[-1]:.1f} ms; {len(slow)} over 3 ms (start ms, ms): {slow[:12]}"
    )
    # Milliseconds of each sync beyond its first 5, over the wall time: the share of moments at
    # which a newly arriving record is at least 5 ms from being durable.
    beyond = sum(max(0.0, ms - 5.0) for ms in latencies) / 1000
    print(f"share of the time with over 5 ms of a sync still to go: {100 * beyond / wall:.2f}%")


if __name__ == "__main__":
    main()
