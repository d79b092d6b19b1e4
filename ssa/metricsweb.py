"""
C{--metrics ENDPOINT}: the Prometheus text format at C{/metrics}, summed
over every worker process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.application import strports
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from . import metrics

log = Logger()


class MetricsResource(Resource):
    """
    C{/metrics}: asks every worker for its counters at each scrape.
    """

    isLeaf = True

    def __init__(self, gather: Callable[[], Deferred]) -> None:
        """
        @param gather: returns a L{Deferred} firing with the workers'
            reports (L{ssa.status.gather}).
        """
        super().__init__()
        self._gather = gather

    def render_GET(self, request) -> object:
        """
        Gather, sum and write the counters.
        """
        done = self._gather()

        def write(reports: list[dict]) -> None:
            body = metrics.render(metrics.merge(report["metrics"] for report in reports))
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            log.failure("could not gather the metrics", failure)
            request.setResponseCode(500)
            request.finish()

        done.addCallbacks(write, failed)
        return NOT_DONE_YET


def metrics_service(reactor, endpoint: str, gather: Callable[[], Deferred]) -> Service:
    """
    A service serving C{/metrics} on C{endpoint} (a Twisted server
    endpoint string, e.g. C{tcp:9464:interface=127.0.0.1}).
    """
    root = Resource()
    root.putChild(b"metrics", MetricsResource(gather))
    site = Site(root)
    site.noisy = False
    return strports.service(endpoint, site, reactor=reactor)
