"""A Follow-mode subscriber's status port: what it serves and where.

The subscriber serves these paths; the operator (over the pod's IP) and
`feedline dev` (over loopback) read them, and the rendered probes point at
them. Both sides import these names, so they cannot drift apart.
"""

from typing import Final

# The port the operator renders into a follower's pod (FEEDLINE_STATUS_PORT).
STATUS_PORT: Final = 8080
# GET: the latest run summary as JSON, the same document a CronJob run leaves
# as its termination message.
SUMMARY_PATH: Final = "/summary"
# GET: 200 while the follower works, 503 once it has failed or halted.
HEALTH_PATH: Final = "/healthz"
