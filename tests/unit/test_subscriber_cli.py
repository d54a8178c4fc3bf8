"""`feedline subscribe`: flags and environment variables, and exit 2 on bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from feedline_contracts import subscriber_env as env
from feedline_contracts.auth import FeedAuth
from feedline_subscriber.command import subscribe
from feedline_subscriber.settings import FLAGS, SettingsError, load_settings

pytestmark = pytest.mark.unit

REQUIRED = [
    "--subscription",
    "s1",
    "--feed-url",
    "http://offers/events",
    "--database-url",
    "sqlite:///rm.db",
    "--projection",
    "feedline.services.loyalty_program.projection:project_special_offers",
]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> typer.Typer:
    monkeypatch.chdir(tmp_path)  # a run that starts by mistake writes nothing here
    for name in list(vars(env).values()):
        if isinstance(name, str) and name.startswith("FEEDLINE_"):
            monkeypatch.delenv(name, raising=False)
    app = typer.Typer()
    app.command("subscribe")(subscribe)

    @app.callback()
    def root() -> None:
        """Test root."""

    return app


def invoke(app: typer.Typer, *args: str, **environment: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["subscribe", *args], env=environment)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def test_every_flag_has_an_environment_variable_from_the_one_list() -> None:
    names = {value for value in vars(env).values() if isinstance(value, str)}
    for flag, variable in FLAGS.values():
        assert variable in names, flag


def test_help_lists_every_flag(cli: typer.Typer) -> None:
    code, output = invoke(cli, "--help")
    assert code == 0
    for flag, _ in FLAGS.values():
        assert flag in output, flag


def test_missing_settings_exit_2_naming_flag_and_variable(cli: typer.Typer) -> None:
    code, output = invoke(cli)
    assert code == 2
    assert "--subscription (FEEDLINE_SUBSCRIPTION): is required" in output
    assert "--feed-url (FEEDLINE_FEED_URL): is required" in output


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        (
            "--batch-size",
            "0",
            "--batch-size (FEEDLINE_BATCH_SIZE): Input should be greater than or equal to 1",
        ),
        ("--batch-size", "10001", "less than or equal to 10000"),
        ("--on-poison-event", "Ignore", "Input should be 'DeadLetter' or 'Halt'"),
        ("--feed-auth", "basic", "Input should be 'None', 'Token' or 'ServiceAccountToken'"),
        ("--start-position", "Middle", "must be Beginning, Head or a sequence number >= 1"),
        ("--projection", "not-a-path", "must be an import path package.module:function"),
        ("--database-url", "mysql://db/x", "expected postgresql://"),
        ("--feed-url", "offers/events", "must be an http:// or https:// URL"),
        ("--subscription", "bad name!", "must be 1-253 letters"),
        ("--event-types", "A,B C", "must be comma-separated event names"),
        ("--feed-wait-seconds", "31", "less than or equal to 30"),
    ],
)
def test_bad_values_exit_2_naming_the_flag_and_what_is_accepted(
    cli: typer.Typer, flag: str, value: str, expected: str
) -> None:
    args = [*REQUIRED]
    if flag in args:
        index = args.index(flag)
        args[index + 1] = value
    else:
        args += [flag, value]
    code, output = invoke(cli, *args)
    assert code == 2
    assert flag in output
    assert expected in output


def test_token_auth_needs_a_token_file(cli: typer.Typer) -> None:
    code, output = invoke(cli, *REQUIRED, "--feed-auth", "Token")
    assert code == 2
    assert "--feed-token-file (FEEDLINE_FEED_TOKEN_FILE) is required" in output


@pytest.mark.parametrize("old", ["serviceaccount", "kubernetes", "ServiceAccount"])
def test_old_feed_auth_names_exit_2_naming_the_flag_and_the_accepted_values(
    cli: typer.Typer, old: str
) -> None:
    for code, output in (
        invoke(cli, *REQUIRED, "--feed-auth", old),
        invoke(cli, *REQUIRED, **{env.FEED_AUTH: old}),
    ):
        assert code == 2
        assert (
            f"--feed-auth (FEEDLINE_FEED_AUTH): {old!r} is an old name: use ServiceAccountToken"
            in output
        )
        assert "None, Token, ServiceAccountToken" in output


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("None", FeedAuth.NONE),
        ("none", FeedAuth.NONE),
        ("TOKEN", FeedAuth.TOKEN),
        ("ServiceAccountToken", FeedAuth.SERVICE_ACCOUNT_TOKEN),
        (" serviceaccounttoken ", FeedAuth.SERVICE_ACCOUNT_TOKEN),
    ],
)
def test_feed_auth_takes_the_crds_names_in_any_letter_case(given: str, expected: FeedAuth) -> None:
    settings = load_settings(
        subscription="s",
        feed_url="http://f/events",
        database_url="sqlite:///x.db",
        projection="a:b",
        feed_auth=given,
        feed_token_file="/run/token",
    )
    assert settings.feed_auth is expected


def test_help_names_the_feed_auth_vocabulary(cli: typer.Typer) -> None:
    code, output = invoke(cli, "--help", COLUMNS="300")
    assert code == 0
    assert "None | Token | ServiceAccountToken, in any letter case" in output
    assert "serviceaccount " not in output


def test_a_bad_integer_is_refused_by_the_flag_parser(cli: typer.Typer) -> None:
    code, output = invoke(cli, *REQUIRED, "--batch-size", "many")
    assert code == 2
    assert "--batch-size" in output


def test_environment_variables_configure_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        env.SUBSCRIPTION: "from-env",
        env.FEED_URL: "https://offers.example/events",
        env.DATABASE_URL: "postgresql://u@db/rm",
        env.PROJECTION: "a.b:c",
        env.EVENT_TYPES: "SpecialOfferCreated, SpecialOfferRemoved",
        env.BATCH_SIZE: "5000",
        env.START_POSITION: "head",
        env.ON_POISON_EVENT: "deadletter",
        env.FOLLOW: "true",
        env.REPLAY_TOKEN: "r2",
        env.REPLAY_FROM_SEQUENCE: "7",
        env.STATUS_PORT: "8080",
    }.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(batch_size=None)
    assert settings.subscription == "from-env"
    assert settings.event_types == ("SpecialOfferCreated", "SpecialOfferRemoved")
    assert settings.batch_size == 5000
    assert settings.start_position == "Head"
    assert settings.on_poison_event.value == "DeadLetter"
    assert settings.follow is True
    assert (settings.replay_token, settings.replay_from_sequence) == ("r2", 7)
    assert settings.status_port == 8080
    # A flag given explicitly wins over the environment.
    assert load_settings(batch_size=10).batch_size == 10


def test_start_position_accepts_a_sequence_number() -> None:
    settings = load_settings(
        subscription="s",
        feed_url="http://f/events",
        database_url="sqlite:///x.db",
        projection="a:b",
        start_position="42",
    )
    assert settings.start_position == 42
    with pytest.raises(SettingsError, match="--start-position"):
        load_settings(
            subscription="s",
            feed_url="http://f/events",
            database_url="sqlite:///x.db",
            projection="a:b",
            start_position="0",
        )


BROKER = "rabbitmq-stream://reader:s3cret-pw@broker:5552/%2F"
STREAM = "feedline.events.special-offers"


def test_a_broker_and_its_stream_pick_the_rabbitmq_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(env.BROKER_URL, BROKER)
    monkeypatch.setenv(env.BROKER_STREAM, STREAM)
    settings = load_settings(
        subscription="s",
        feed_url="http://special-offers/events",
        database_url="sqlite:///x.db",
        projection="a:b",
    )
    assert settings.transport == "rabbitmq"
    address = settings.broker_address()
    assert address is not None
    assert (address.host, address.port, address.username, address.vhost) == (
        "broker",
        5552,
        "reader",
        "/",
    )
    assert settings.broker_stream == STREAM
    assert "s3cret-pw" not in repr(settings)  # settings may be logged
    without = load_settings(
        subscription="s",
        feed_url="grpc://special-offers:9090",
        database_url="sqlite:///x.db",
        projection="a:b",
        broker_url="",
        broker_stream="",
    )
    assert (without.transport, without.broker_address()) == ("grpc", None)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--broker-url", BROKER],
            "--broker-url (FEEDLINE_BROKER_URL) and --broker-stream (FEEDLINE_BROKER_STREAM) go "
            "together: --broker-url (FEEDLINE_BROKER_URL) is set, --broker-stream "
            "(FEEDLINE_BROKER_STREAM) is not",
        ),
        (
            ["--broker-stream", STREAM],
            "--broker-stream (FEEDLINE_BROKER_STREAM) is set, --broker-url (FEEDLINE_BROKER_URL) "
            "is not",
        ),
        (
            ["--broker-url", "amqp://reader:s3cret-pw@broker:5672/", "--broker-stream", STREAM],
            "--broker-url (FEEDLINE_BROKER_URL): the broker URL must start with "
            "rabbitmq-stream:// (or rabbitmq-stream+tls://), not amqp://",
        ),
        (
            ["--broker-url", "rabbitmq-stream://broker:5552/", "--broker-stream", STREAM],
            "--broker-url (FEEDLINE_BROKER_URL): the broker URL needs a user and a password "
            "(USER:PASSWORD@HOST); expected rabbitmq-stream[+tls]://USER:PASSWORD@HOST[:PORT]/VHOST",
        ),
        (
            [
                "--broker-url",
                "rabbitmq-stream://u:s3cret-pw@broker:port/",
                "--broker-stream",
                STREAM,
            ],
            "--broker-url (FEEDLINE_BROKER_URL): the broker URL's port is not a port",
        ),
        (
            ["--broker-url", BROKER, "--broker-stream", "special-offers"],
            "--broker-stream (FEEDLINE_BROKER_STREAM): must be the service's stream, "
            "feedline.events.SERVICE (e.g. feedline.events.special-offers); got 'special-offers'",
        ),
        (
            ["--broker-url", BROKER, "--broker-stream", "feedline.events.Not A Service"],
            "--broker-stream (FEEDLINE_BROKER_STREAM): must be the service's stream",
        ),
    ],
)
def test_broker_flags_that_cannot_work_exit_2_naming_them_without_the_password(
    cli: typer.Typer, args: list[str], expected: str
) -> None:
    code, output = invoke(cli, *REQUIRED, *args, COLUMNS="300")
    assert code == 2, output
    assert expected in " ".join(output.split()), output
    assert "s3cret-pw" not in output


def test_broker_variables_are_checked_as_the_flags_are(cli: typer.Typer) -> None:
    code, output = invoke(
        cli,
        *REQUIRED,
        **{env.BROKER_URL: "amqp://reader:s3cret-pw@broker/", env.BROKER_STREAM: STREAM},
    )
    assert code == 2
    assert "--broker-url (FEEDLINE_BROKER_URL): the broker URL must start with" in output
    assert "s3cret-pw" not in output


def test_a_broker_needs_the_http_feed_as_the_feed_url(cli: typer.Typer) -> None:
    args = [*REQUIRED]
    args[args.index("--feed-url") + 1] = "grpc://special-offers:9090"
    code, output = invoke(cli, *args, "--broker-url", BROKER, "--broker-stream", STREAM)
    assert code == 2
    assert (
        "--feed-url (FEEDLINE_FEED_URL) must be the service's HTTP feed (http:// or https://, "
        "e.g. http://special-offers/events) when --broker-url (FEEDLINE_BROKER_URL) is set"
    ) in " ".join(output.split())
    assert "s3cret-pw" not in output
