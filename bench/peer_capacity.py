"""
Is the peer the bottleneck?  Each peer of L{bench.peer} alone, loaded by C
clients (C{openssl s_time -new}, full handshakes, several in parallel) on its
full-handshake port: handshakes per second and the peer's CPU per handshake.

    python -m bench.peer_capacity [--clients 4] [--seconds 4]

Compare the peer's CPU per handshake with the TLS process's and the driver's
in C{python -m bench.run}'s table: everything shares the machine's cores, so
a peer that costs as much as the path under test compresses every ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peer import PEERS, make_peer
from bench.run import cpu_seconds


def capacity(kind: str, clients: int, seconds: int) -> dict:
    """Load one peer of C{kind} with C{clients} C{s_time} processes; its figures."""
    peer = make_peer(kind, tempfile.mkdtemp(prefix="ssa-bench-cap-")).start()
    try:
        h0, c0, t0 = peer.handshakes(False), cpu_seconds(peer.pid), time.monotonic()
        procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{peer.full_port}",
                                   "-new", "-time", str(seconds), "-CAfile", peer.ca_path],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(clients)]
        for p in procs:
            p.wait()
        wall = time.monotonic() - t0
        h1, c1 = peer.handshakes(False), cpu_seconds(peer.pid)
    finally:
        peer.stop()
    n = h1[0] - h0[0]
    return {"peer": kind, "handshakes_per_s": n / wall, "resumed": h1[1] - h0[1],
            "peer_cpu_ms_per_handshake": (c1 - c0) / max(1, n) * 1e3,
            "peer_cores_used": (c1 - c0) / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=4)
    args = ap.parse_args(argv)
    for kind in sorted(PEERS):
        r = capacity(kind, args.clients, args.seconds)
        print(f"{kind:6} peer: {r['handshakes_per_s']:.0f} full handshakes/s, "
              f"{r['resumed']} resumed, peer CPU {r['peer_cpu_ms_per_handshake']:.2f} ms/handshake, "
              f"{r['peer_cores_used']:.2f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
