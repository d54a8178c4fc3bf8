"""The pure builders: golden manifests and the rules every child follows."""

from __future__ import annotations

from typing import Any

import pytest

from feedline_contracts import subscriber_env as env_names
from feedline_contracts import subscriber_env as environment
from feedline_contracts.auth import TOKEN_AUDIENCE
from feedline_contracts.eventsubscription import EventSubscription
from feedline_operator import builders, names
from feedline_operator.builders import ChildDefaults
from tests.support.operator_fixtures import assert_golden, sample

pytestmark = pytest.mark.unit

DEFAULTS = ChildDefaults()


def _sub(name: str = "subscription-cronjob", **spec: Any) -> EventSubscription:
    body = sample(name)
    body["spec"].update(spec)
    return EventSubscription.from_body(body)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    template = (
        manifest["spec"]["jobTemplate"]["spec"]["template"]
        if manifest["kind"] == "CronJob"
        else manifest["spec"]["template"]
    )
    spec: dict[str, Any] = template["spec"]
    return spec


def test_cronjob_matches_golden() -> None:
    assert_golden("cronjob", builders.build_cronjob(_sub(), DEFAULTS))


def test_follow_deployment_matches_golden() -> None:
    assert_golden("deployment", builders.build_deployment(_sub("subscription-follow"), DEFAULTS))


def test_run_now_job_matches_golden() -> None:
    assert_golden("run-now-job", builders.build_run_now_job(_sub(), DEFAULTS, "2024-05-01T10:00"))


@pytest.mark.parametrize("name", ["subscription-cronjob", "subscription-follow"])
def test_children_follow_the_restricted_pod_security_profile(name: str) -> None:
    pod = _pod_spec(builders.build_child(_sub(name), DEFAULTS))
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    assert container["terminationMessagePolicy"] == "File"
    assert container["command"] == ["feedline", "subscribe"]


@pytest.mark.parametrize("name", ["subscription-cronjob", "subscription-follow"])
def test_children_are_owned_and_labelled(name: str) -> None:
    sub = _sub(name)
    child = builders.build_child(sub, DEFAULTS)
    (owner,) = child["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "feedline.dev/v1alpha1",
        "kind": "EventSubscription",
        "name": sub.name,
        "uid": sub.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    labels = child["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "feedline-operator"
    assert labels["app.kubernetes.io/instance"] == sub.name
    assert labels[names.LABEL_SUBSCRIPTION] == sub.name
    template = (
        child["spec"]["jobTemplate"]["spec"]["template"]
        if child["kind"] == "CronJob"
        else child["spec"]["template"]
    )
    assert template["metadata"]["labels"] == labels


def test_cronjob_defaults() -> None:
    spec = builders.build_cronjob(_sub(), DEFAULTS)["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == DEFAULTS.starting_deadline_seconds
    assert spec["successfulJobsHistoryLimit"] == 3
    assert spec["failedJobsHistoryLimit"] == 3
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == DEFAULTS.backoff_limit
    assert job["activeDeadlineSeconds"] == DEFAULTS.active_deadline_seconds
    assert job["ttlSecondsAfterFinished"] == DEFAULTS.ttl_seconds_after_finished
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_env_is_rendered_from_the_spec_by_the_subscribers_names() -> None:
    container = builders.subscriber_container(_sub(), DEFAULTS)
    env = _env(container)
    assert env[env_names.SUBSCRIPTION] == "loyalty-special-offers"
    assert env[env_names.FEED_URL] == "http://special-offers.shop.svc/events"
    assert env[env_names.EVENT_TYPES] == (
        "SpecialOfferCreated,SpecialOfferUpdated,SpecialOfferRemoved"
    )
    assert env[env_names.DATABASE_URL] == {"secretKeyRef": {"name": "loyalty-db", "key": "dsn"}}
    assert env[env_names.BATCH_SIZE] == "200"
    assert env[env_names.FEED_AUTH] == "None"  # the CRD's value, as-is
    assert env[env_names.START_POSITION] == "Beginning"
    assert env[env_names.ON_POISON_EVENT] == "Halt"
    assert env[env_names.TERMINATION_LOG] == container["terminationMessagePath"]
    for absent in (env_names.FOLLOW, env_names.REPLAY_TOKEN, env_names.FEED_TOKEN_FILE):
        assert absent not in env
    assert all(isinstance(e.get("value", ""), str) for e in container["env"])


def test_follow_mode_env_port_and_probes() -> None:
    container = builders.subscriber_container(_sub("subscription-follow"), DEFAULTS)
    env = _env(container)
    assert env[env_names.FOLLOW] == "true"
    assert env[env_names.STATUS_PORT] == str(names.STATUS_PORT)
    assert env[env_names.REPLAY_TOKEN] == "rebuild-2"
    assert env[env_names.REPLAY_FROM_SEQUENCE] == "100"
    assert env["LOG_LEVEL"] == "debug"
    assert container["ports"][0]["containerPort"] == names.STATUS_PORT
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_follow_deployment_is_one_replica_recreate_and_suspend_scales_to_zero() -> None:
    running = builders.build_deployment(_sub("subscription-follow"), DEFAULTS)["spec"]
    assert running["replicas"] == 1
    assert running["strategy"] == {"type": "Recreate"}
    assert running["template"]["spec"]["restartPolicy"] == "Always"
    suspended = builders.build_deployment(_sub("subscription-follow", suspend=True), DEFAULTS)
    assert suspended["spec"]["replicas"] == 0


def test_suspend_and_time_zone_reach_the_cronjob() -> None:
    spec = builders.build_cronjob(_sub(suspend=True, timeZone="Europe/Copenhagen"), DEFAULTS)
    assert spec["spec"]["suspend"] is True
    assert spec["spec"]["timeZone"] == "Europe/Copenhagen"


def test_token_auth_mounts_only_the_secret_key() -> None:
    sub = _sub("subscription-follow")
    pod = _pod_spec(builders.build_child(sub, DEFAULTS))
    volume = next(v for v in pod["volumes"] if v["name"] == "feed-token")
    assert volume["secret"] == {
        "secretName": "cart-feed",
        "items": [{"key": "token", "path": "token"}],
        "defaultMode": 0o440,
    }
    env = _env(pod["containers"][0])
    assert env[env_names.FEED_AUTH] == "Token"
    assert env[env_names.FEED_TOKEN_FILE] == environment.DEFAULT_SERVICEACCOUNT_TOKEN_FILE


def test_service_account_token_auth_projects_a_feedline_audience_token() -> None:
    sub = _sub(feed={"url": "http://f/events", "auth": {"type": "ServiceAccountToken"}})
    pod = _pod_spec(builders.build_child(sub, DEFAULTS))
    volume = next(v for v in pod["volumes"] if v["name"] == "feed-token")
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == TOKEN_AUDIENCE == "feedline"
    assert pod["automountServiceAccountToken"] is False
    assert _env(pod["containers"][0])[env_names.FEED_AUTH] == "ServiceAccountToken"


def test_read_model_retries_are_rendered_from_the_spec_only_when_set() -> None:
    assert env_names.DATABASE_RETRIES not in _env(builders.subscriber_container(_sub(), DEFAULTS))
    read_model = {**sample("subscription-cronjob")["spec"]["readModel"], "retryAttempts": 3}
    container = builders.subscriber_container(_sub(readModel=read_model), DEFAULTS)
    assert _env(container)[env_names.DATABASE_RETRIES] == "3"


def test_subscriber_image_defaults_to_the_operators() -> None:
    pod = _pod_spec(builders.build_child(_sub(), ChildDefaults(subscriber_image="x/y:1")))
    assert pod["containers"][0]["image"] == "x/y:1"
    follow = _pod_spec(builders.build_child(_sub("subscription-follow"), DEFAULTS))
    assert follow["containers"][0]["image"] == "registry.example/feedline:0.2.0"


def test_run_now_job_names_are_deterministic_per_request_and_short() -> None:
    sub = _sub()
    first = builders.run_now_job_name(sub, "a")
    assert first == builders.run_now_job_name(sub, "a")
    assert first != builders.run_now_job_name(sub, "b")
    long = EventSubscription.from_body(
        {
            **sample("subscription-cronjob"),
            "metadata": {"name": "x" * 52, "namespace": "n", "uid": "u"},
        }
    )
    assert len(builders.run_now_job_name(long, "a")) <= 63


def test_cronjob_without_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        builders.build_cronjob(_sub(schedule=None), DEFAULTS)


@pytest.mark.parametrize("name", ["subscription-cronjob", "subscription-follow"])
def test_only_listed_variables_are_rendered(name: str) -> None:
    sub = _sub(name)
    extra = {e.name for e in sub.spec.subscriber.env}
    rendered = {e["name"] for e in builders.subscriber_env(sub)} - extra
    assert rendered <= set(builders.RENDERED_ENV)


def test_feed_wait_and_retries_are_rendered_from_the_spec_only_when_set() -> None:
    """They replace FEEDLINE_FEED_WAIT_SECONDS / _RETRY_ATTEMPTS in spec.subscriber.env,
    which the CRD refuses (every FEEDLINE_* name is the operator's)."""
    plain = {e["name"] for e in builders.subscriber_env(_sub())}
    assert not plain & {env_names.FEED_WAIT_SECONDS, env_names.FEED_RETRY_ATTEMPTS}
    feed = {**sample("subscription-cronjob")["spec"]["feed"], "waitSeconds": 5, "retryAttempts": 0}
    env = {e["name"]: e.get("value") for e in builders.subscriber_env(_sub(feed=feed))}
    assert (env[env_names.FEED_WAIT_SECONDS], env[env_names.FEED_RETRY_ATTEMPTS]) == ("5", "0")


BROKER = {
    "urlSecretRef": {"name": "rabbitmq-credentials", "key": "url"},
    "stream": "feedline.events.special-offers",
}


@pytest.mark.parametrize("name", ["subscription-cronjob", "subscription-follow"])
def test_broker_url_comes_from_its_secret_and_the_stream_is_a_value(name: str) -> None:
    """The broker's URL holds its credentials: rendered by secretKeyRef, like the DSN."""
    feed = {**sample(name)["spec"]["feed"], "url": "http://special-offers/events"}
    sub = _sub(name, feed={**feed, "broker": BROKER})
    env = builders.subscriber_env(sub)
    by_name = {e["name"]: e for e in env}
    assert by_name[env_names.BROKER_URL] == {
        "name": env_names.BROKER_URL,
        "valueFrom": {"secretKeyRef": {"name": "rabbitmq-credentials", "key": "url"}},
    }
    assert by_name[env_names.BROKER_STREAM] == {
        "name": env_names.BROKER_STREAM,
        "value": "feedline.events.special-offers",
    }
    # The HTTP feed stays: the head, and what the stream no longer holds.
    assert by_name[env_names.FEED_URL]["value"] == "http://special-offers/events"
    order = [e["name"] for e in env]
    assert order.index(env_names.BROKER_URL) == order.index(env_names.FEED_URL) + 1
    assert {env_names.BROKER_URL, env_names.BROKER_STREAM} <= set(builders.RENDERED_ENV)
    # Nothing else changes for the pod: no volume, no port, no other credential.
    plain = builders.build_child(_sub(name), DEFAULTS)
    with_broker = builders.build_child(sub, DEFAULTS)
    assert _pod_spec(with_broker)["volumes"] == _pod_spec(plain)["volumes"]
    (container,) = _pod_spec(with_broker)["containers"]
    (plain_container,) = _pod_spec(plain)["containers"]
    assert container.get("ports") == plain_container.get("ports")
    assert container["volumeMounts"] == plain_container["volumeMounts"]


def test_without_a_broker_no_broker_variable_is_rendered() -> None:
    for name in ("subscription-cronjob", "subscription-follow"):
        rendered = {e["name"] for e in builders.subscriber_env(_sub(name))}
        assert not rendered & {env_names.BROKER_URL, env_names.BROKER_STREAM}
