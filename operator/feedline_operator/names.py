"""Names shared by the CRD, the builders and the handlers: one place to change them."""

import posixpath
from typing import Final

from feedline_contracts import auth, follower, summary
from feedline_contracts import subscriber_env as environment
from feedline_contracts.eventsubscription import model as api

# The API's names (the CRD is generated from the same constants).
GROUP: Final = api.GROUP
VERSION: Final = api.VERSION
API_VERSION: Final = api.API_VERSION
KIND: Final = api.KIND
PLURAL: Final = api.PLURAL

# Every child carries these; the operator watches its children through them.
MANAGED_BY: Final = "feedline-operator"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_VERSION: Final = "app.kubernetes.io/version"
# The owning subscription's name, on children and their pods.
LABEL_SUBSCRIPTION: Final = f"{GROUP}/subscription"
SUBSCRIBER_APP: Final = "feedline-subscriber"
SUBSCRIBER_COMPONENT: Final = "subscriber"

# Set it (to any value, e.g. a timestamp) to start a Job from the CronJob now.
ANNOTATION_RUN_NOW: Final = f"{GROUP}/run-now"
# On run-now Jobs: which run-now request made them.
ANNOTATION_RUN_NOW_REQUEST: Final = f"{GROUP}/run-now-request"
# kopf keeps its bookkeeping under our domain instead of kopf.zalando.org, on
# a subdomain of its own: kopf leaves every annotation under its prefix out of
# the diffs it reports, so with the bare group it would never see run-now.
KOPF_PREFIX: Final = f"kopf.{GROUP}"
FINALIZER: Final = f"{GROUP}/operator"

CONTAINER_NAME: Final = "subscriber"
SUBSCRIBE_COMMAND: Final = ("feedline", "subscribe")
TERMINATION_MESSAGE_PATH: Final = summary.TERMINATION_MESSAGE_PATH
# The feed token (a Secret key or a projected ServiceAccount token) is mounted
# where the subscriber looks by default: FEED_TOKEN_DIR/FEED_TOKEN_FILE.
FEED_TOKEN_DIR: Final = posixpath.dirname(environment.DEFAULT_SERVICEACCOUNT_TOKEN_FILE)
FEED_TOKEN_FILE: Final = posixpath.basename(environment.DEFAULT_SERVICEACCOUNT_TOKEN_FILE)
FEED_TOKEN_AUDIENCE: Final = auth.TOKEN_AUDIENCE
STATUS_PORT: Final = follower.STATUS_PORT
