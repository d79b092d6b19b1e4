"""
Where the daemon spends bulk-transfer time: py-spy (pip install py-spy) on
an ssa daemon while the driver uploads and downloads through it.

    python -m bench.profile_daemon [--backend openssl] [--seconds 8]

Prints the top functions by own time and by inclusive time.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time

from bench.peer import make_peer
from bench.run import SSAPath, download, one_connection, upload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="openssl")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--load", choices=["bulk", "connect", "resume"], default="bulk",
                    help="bulk transfers, or new connections (full handshakes or resumed)")
    ap.add_argument("--native", action="store_true", help="include C frames (OpenSSL, syscalls)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ssa-prof-")
    peer = make_peer("c", work).start()
    path = SSAPath(args.backend, peer, work)
    out = os.path.join(work, "stacks.txt")
    stop = threading.Event()

    def load():
        while not stop.is_set():
            if args.load == "bulk":
                upload(path, 64 << 20)
                download(path, 64 << 20)
            else:
                one_connection(path, args.load == "resume")

    t = threading.Thread(target=load, daemon=True)
    t.start()
    time.sleep(0.5)
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    native = ["--native"] if args.native else []
    subprocess.run([spy, "record", "--format", "raw", "--nonblocking", *native, "-r", "200",
                    "-d", str(args.seconds), "-p", str(path.pid), "-o", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop.set()
    t.join()
    path.daemon.stop()
    peer.stop()
    own, incl, total = collections.Counter(), collections.Counter(), 0
    for line in open(out):
        stack, _, n = line.rstrip().rpartition(" ")
        n = int(n)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"{total} samples, daemon with the {args.backend} backend under {args.load} load")
    print("own time:")
    for f, n in own.most_common(int(os.environ.get("TOP_OWN", 12))):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("inclusive:")
    for f, n in incl.most_common(int(os.environ.get("TOP_INCL", 40))):
        print(f"  {100 * n / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
