"""The benchmarks' correctness checks fail on wrong counts and duplicates.

Before, bench_subscriber `assert`ed its counts (gone under `python -O`) and
bench_operator only printed how many CronJobs it found: a duplicate or a
missing child still gave figures and exit 0.
"""

from __future__ import annotations

import pytest
from bench import checks
from bench.checks import CheckError, Child, Subscription, operator_problems, read_model_problems

pytestmark = pytest.mark.unit


def description(offer: int) -> str:
    return f"offer {offer}"


def rows(count: int) -> list[tuple[int, str, int]]:
    return [(n, description(n), n) for n in range(1, count + 1)]


def test_an_exact_read_model_passes() -> None:
    assert read_model_problems(rows(5), 5, description) == []


def test_a_read_model_with_too_few_rows_fails() -> None:
    problems = read_model_problems(rows(4), 5, description)
    assert "rows: 4, expected 5" in problems
    assert any("offers missing: 5" in problem for problem in problems)


def test_a_read_model_with_too_many_rows_fails() -> None:
    problems = read_model_problems(rows(6), 5, description)
    assert "rows: 6, expected 5" in problems
    assert any("unexpected offers: 6" in problem for problem in problems)


def test_a_duplicated_offer_fails_even_when_the_count_is_right() -> None:
    # Offer 5 lost, offer 2 twice: the row count alone would pass.
    duplicated = [*rows(4), (2, description(2), 2)]
    problems = read_model_problems(duplicated, 5, description)
    assert any("in more than one row: 2" in problem for problem in problems)
    assert any("offers missing: 5" in problem for problem in problems)
    assert not any(problem.startswith("rows:") for problem in problems)


def test_a_row_with_the_wrong_content_fails() -> None:
    wrong = [*rows(4), (5, description(5), 4)]
    problems = read_model_problems(wrong, 5, description)
    assert problems == ["1 rows with the wrong description or last_sequence_number: 5"]


def test_a_long_list_of_offenders_is_shortened() -> None:
    problems = read_model_problems([], 100, description)
    assert "offers missing: 1, 10, 100, 11, 12, ... (100 in all)" in problems[1]


def test_require_raises_with_every_problem() -> None:
    checks.require("nothing wrong", [])
    with pytest.raises(CheckError, match=r"^subscriber read model: rows: 4, expected 5; "):
        checks.require("subscriber read model", read_model_problems(rows(4), 5, description))


def test_a_failed_check_exits_non_zero_with_the_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        checks.fail_and_exit("bench_subscriber", CheckError("baseline read model: rows: 1"))
    assert exited.value.code == checks.CHECK_FAILED_EXIT != 0
    assert "bench_subscriber: CHECK FAILED: baseline read model: rows: 1" in capsys.readouterr().err


def test_count_problems() -> None:
    assert checks.count_problems("events processed", 3, 3) == []
    assert checks.count_problems("events processed", 2_000, 3_000) == [
        "events processed: 2,000, expected 3,000"
    ]


def subscriptions(count: int, *, ready: bool = True) -> list[Subscription]:
    return [Subscription(f"s{n}", f"uid-{n}", ready) for n in range(count)]


def cronjobs(count: int) -> list[Child]:
    return [Child("CronJob", f"s{n}", (f"uid-{n}",)) for n in range(count)]


def test_one_ready_cronjob_per_subscription_passes() -> None:
    assert operator_problems(3, subscriptions(3), cronjobs(3)) == []


def test_a_missing_cronjob_fails() -> None:
    problems = operator_problems(3, subscriptions(3), cronjobs(2))
    assert "CronJobs: 2, expected 3" in problems
    assert "1 subscriptions without a CronJob: s2" in problems


def test_a_duplicate_cronjob_fails_even_when_the_count_is_right() -> None:
    # s1 has two CronJobs, s2 none: still three CronJobs in all.
    children = [*cronjobs(2), Child("CronJob", "s1-again", ("uid-1",))]
    problems = operator_problems(3, subscriptions(3), children)
    assert not any(problem.startswith("CronJobs:") for problem in problems)
    assert "1 subscriptions controlling more than one CronJob: s1" in problems
    assert "1 subscriptions without a CronJob: s2" in problems


def test_an_extra_cronjob_fails() -> None:
    children = [*cronjobs(3), Child("CronJob", "stray", ())]
    problems = operator_problems(3, subscriptions(3), children)
    assert "CronJobs: 4, expected 3" in problems
    assert any("not controlled by exactly one of the subscriptions: stray" in p for p in problems)


def test_a_cronjob_with_two_controllers_fails() -> None:
    children = [*cronjobs(2), Child("CronJob", "s2", ("uid-2", "uid-0"))]
    problems = operator_problems(3, subscriptions(3), children)
    assert any("not controlled by exactly one of the subscriptions: s2" in p for p in problems)


def test_a_deployment_fails() -> None:
    children = [*cronjobs(3), Child("Deployment", "s0", ("uid-0",))]
    problems = operator_problems(3, subscriptions(3), children)
    assert problems == ["1 children that are not CronJobs: Deployment/s0"]


def test_a_subscription_not_ready_fails() -> None:
    listed = [*subscriptions(2), Subscription("s2", "uid-2", ready=False)]
    assert operator_problems(3, listed, cronjobs(3)) == ["1 not Ready=True: s2"]


def test_a_wrong_number_of_subscriptions_fails() -> None:
    problems = operator_problems(3, subscriptions(2), cronjobs(2))
    assert "EventSubscriptions: 2, expected 3" in problems


def test_ratios_keep_four_significant_digits_and_their_figures() -> None:
    # The figure docs/benchmarks.md once gave as 0.25.
    assert checks.ratio(206_612, 840_492) == "0.2458 = 206,612 / 840,492"
    assert checks.significant(0.25) == "0.2500"
    assert checks.significant(133.42) == "133.4"
    assert checks.ratio(500, 14.7) == "34.01 = 500 / 14.700"


APISERVER_METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests ...
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="batch",resource="cronjobs",scope="resource",subresource="",verb="GET",version="v1"} 7
apiserver_request_total{code="404",component="apiserver",dry_run="",group="batch",resource="cronjobs",scope="resource",subresource="",verb="GET",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="feedline.io",resource="eventsubscriptions",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 2
apiserver_request_total{code="200",component="",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 1
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="batch",resource="cronjobs",scope="resource",subresource="",verb="GET",version="v1"} 10
"""  # noqa: E501 (kube-apiserver's own lines)


def test_apiserver_requests_sum_by_verb_and_resource() -> None:
    assert checks.apiserver_requests(APISERVER_METRICS) == {
        ("GET", "cronjobs"): 10,
        ("PATCH", "eventsubscriptions/status"): 2,
        ("GET", checks.NON_RESOURCE): 1,
    }


def test_request_delta_keeps_what_changed_including_new_keys() -> None:
    before = {("GET", "cronjobs"): 10.0, ("LIST", "pods"): 4.0}
    after = {("GET", "cronjobs"): 25.0, ("LIST", "pods"): 4.0, ("GET", "secrets"): 5.0}
    assert checks.request_delta(before, after) == {("GET", "cronjobs"): 15, ("GET", "secrets"): 5}
    # A baseline larger than the window: the difference stays negative, not hidden.
    assert checks.request_delta({("PUT", "leases"): 7.0}, {("PUT", "leases"): 6.0}) == {
        ("PUT", "leases"): -1
    }


def test_writes_to_the_named_resources_in_a_quiet_window_are_problems() -> None:
    requests = {
        ("GET", "cronjobs"): 100.0,
        ("PATCH", "eventsubscriptions/status"): 50.0,
        ("PUT", "cronjobs"): 2.0,
        ("PUT", "leases"): 1.0,  # not one of the named resources
        ("POST", "events"): -1.0,  # the baseline had more: not a write of the window
    }
    problems = checks.resync_write_problems(
        requests, ("cronjobs", "deployments", "eventsubscriptions", "events")
    )
    assert problems == [
        "50 PATCH eventsubscriptions/status while nothing changed",
        "2 PUT cronjobs while nothing changed",
    ]
    assert checks.resync_write_problems({("GET", "cronjobs"): 9.0}, ("cronjobs",)) == []


def test_resync_read_problems_name_child_gets_beyond_the_few_a_stale_copy_needs() -> None:
    # 200 objects, one period: a GET of each child is 200; two confirmations are allowed.
    requests = {
        ("GET", "cronjobs"): 200.0,
        ("GET", "deployments"): 2.0,
        ("GET", "secrets"): 200.0,
        ("LIST", "cronjobs"): 1.0,
    }
    problems = checks.resync_read_problems(requests, ("cronjobs", "deployments"), 200)
    assert problems == [
        "200 GET cronjobs in a resync of 200 objects (at most 2: the watch cache answers those)"
    ]
    assert checks.resync_read_problems({}, ("cronjobs",), 200) == []
