"""
What C{ssa status} shows: each worker process's live sockets and counters
(L{local_report}), gathered from every worker (L{gather}) and put together
(L{combine}), and the text people read (L{format_text}).

A report is plain data (it travels between processes as JSON): the
STATUS reply of the wire protocol is L{combine}'s result in JSON.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import metrics
from .constants import version_name

if TYPE_CHECKING:
    from .service import SocketEntry, SocketService

#: The most sockets one STATUS reply lists (the reply must fit in a frame).
MAX_LISTED = 2000


def socket_row(entry: SocketEntry, now: float) -> dict:
    """
    One socket as C{ssa status} lists it.
    """
    sock = entry.sock
    info = sock.session
    remote = sock.remote_address
    bridge = entry.bridge
    return {
        "id": f"{sock.id:#018x}", "pid": sock.owner.pid, "uid": sock.owner.uid,
        "executable": sock.owner.executable, "state": sock.state.value,
        "remote": None if not remote else f"{remote[0]}:{remote[1]}",
        "sni": sock.hostname if info is None or info.server_name is None else info.server_name,
        "tls_version": None if info is None else version_name(info.version),
        "cipher": None if info is None else info.cipher,
        "group": None if info is None else info.group,
        "resumed": None if info is None else info.resumed,
        "bytes_in": 0 if bridge is None else bridge.bytes_in,
        "bytes_out": 0 if bridge is None else bridge.bytes_out,
        "age": round(now - entry.created, 3),
    }


def local_report(service: SocketService, uid: int | None) -> dict:
    """
    This process's part of the status: its sockets (only those of C{uid}
    unless it is L{None}) and its counters.
    """
    now = time.monotonic()
    rows = [
        socket_row(entry, now)
        for entry in list(service.entries.values())
        if uid is None or entry.sock.owner.uid == uid
    ]
    families: list = getattr(service.metrics, "families", list)()
    return {"worker": service.worker_index, "pid": os.getpid(), "sockets": rows, "metrics": families}


def combine(reports: Iterable[dict], expected: int = 1) -> dict:
    """
    One status from the workers' reports: every socket, the counters
    summed over the workers, and which workers did not answer.
    """
    reports = sorted(reports, key=lambda report: report["worker"])
    sockets = [row for report in reports for row in report["sockets"]]
    families = metrics.merge(report["metrics"] for report in reports)
    answered = {report["worker"] for report in reports}
    return {
        "workers": [{"worker": report["worker"], "pid": report["pid"]} for report in reports],
        "missing_workers": [index for index in range(expected) if index not in answered],
        "sockets": sockets[:MAX_LISTED],
        "sockets_total": len(sockets),
        "counters": metrics.summary(families),
    }


def encode(status: dict) -> bytes:
    """
    The STATUS reply's payload.
    """
    return json.dumps(status, sort_keys=True).encode("utf-8")


_COLUMNS = ("id", "pid", "uid", "state", "remote", "sni", "tls_version", "cipher", "group", "resumed",
            "bytes_in", "bytes_out", "age", "executable")


def format_text(status: dict) -> str:
    """
    The status for people: workers, counters, then one line per socket.
    """
    lines = []
    workers = ", ".join(f"{w['worker']} (pid {w['pid']})" for w in status["workers"])
    lines.append(f"workers: {workers}")
    if status["missing_workers"]:
        lines.append(f"not answering: {', '.join(map(str, status['missing_workers']))}")
    counters = status["counters"]
    lines.append("counters: " + " ".join(f"{name}={_number(value)}" for name, value in sorted(counters.items())))
    lines.append(f"sockets: {status['sockets_total']}")
    if status["sockets"]:
        table = [list(_COLUMNS)] + [
            ["-" if row[column] is None else str(row[column]) for column in _COLUMNS] for row in status["sockets"]
        ]
        widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
        for line in table:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip())
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
