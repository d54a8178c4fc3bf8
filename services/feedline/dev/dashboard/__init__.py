"""The dashboard of `feedline dev` (docs/local-mode.md, "Dashboard").

A web page served by `feedline dev` itself (``--dashboard-port``, default
8000 + ``--port-offset``): the services (up or down, restarts, URL, feed head,
request rate), the subscriptions (mode, position, head, lag, last run and its
outcome, next run, a run-now button), every process's log lines (live,
filtered by process, level, request or trace id), the traces the processes
export to it (OTLP/HTTP: ``telemetry``) and a chart of each service's request
rate. Server-rendered (Jinja2) with htmx and server-sent events; htmx, its
SSE extension and uPlot are vendored in ``static/vendor`` (versions and
licenses in its README).
"""

from feedline.dev.dashboard.app import DashboardState, create_app
from feedline.dev.dashboard.server import DashboardServer, bind
from feedline.dev.dashboard.services import ServiceWatch

__all__ = ["DashboardServer", "DashboardState", "ServiceWatch", "bind", "create_app"]
