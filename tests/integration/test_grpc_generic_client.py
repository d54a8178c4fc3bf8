"""A gRPC client that is not ours reads the feed, knowing only the server's address.

It asks the server's reflection service (grpc.reflection.v1alpha.ServerReflection)
for the file that defines feedline.feed.v1.EventFeed, builds the message classes
from it at runtime (a descriptor pool of its own and message_factory), calls
Subscribe and Head with generic ``unary_stream`` / ``unary_unary`` calls, and reads
the answers through the proto3 JSON mapping, as grpcurl does. Nothing of Feedline's
generated code is imported here (the first test checks this file for it); what the
client reads must equal what ``GET /events`` serves. When a ``grpcurl`` binary is
found (FEEDLINE_TEST_GRPCURL, or on PATH), grpcurl itself reads the feed too.
"""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2

from tests.support.services import ServiceProcess, restartable_service
from tests.support.subscriber_workload import publish_commands

pytestmark = pytest.mark.integration

SERVICE = "feedline.feed.v1.EventFeed"  # what a user would type; the rest is reflected
REFLECTION_INFO = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
DEADLINE = 30.0
Json = dict[str, Any]


def test_this_client_imports_nothing_of_feedlines_generated_code() -> None:
    tree = ast.parse(Path(__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("feedline")], imported


@dataclass
class ReflectedService:
    """What reflection told about one service: its pool and its methods."""

    pool: descriptor_pool.DescriptorPool
    methods: dict[str, MethodDescriptor]

    def message_classes(self, method: str) -> tuple[type[Message], type[Message]]:
        descriptor = self.methods[method]
        return (
            message_factory.GetMessageClass(descriptor.input_type),
            message_factory.GetMessageClass(descriptor.output_type),
        )


async def reflect(channel: grpc.aio.Channel, service: str) -> ReflectedService:
    """Ask the server: list its services, fetch the file defining ``service`` and the files
    it depends on, and load them into a new descriptor pool (not the process's default
    one, so nothing another module registered can stand in for what the server said)."""
    call = channel.stream_stream(
        REFLECTION_INFO,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(timeout=DEADLINE)

    async def ask(**request: str) -> reflection_pb2.ServerReflectionResponse:
        await call.write(reflection_pb2.ServerReflectionRequest(**request))  # type: ignore[arg-type]
        answer = await call.read()
        assert isinstance(answer, reflection_pb2.ServerReflectionResponse), answer
        assert not answer.HasField("error_response"), answer.error_response
        return answer

    listed = await ask(list_services="")
    assert service in [entry.name for entry in listed.list_services_response.service]

    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def take(answer: reflection_pb2.ServerReflectionResponse) -> str:
        names = []
        for serialized in answer.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
            files[proto.name] = proto
            names.append(proto.name)
        return names[0]  # the file asked for comes first

    root = take(await ask(file_containing_symbol=service))
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    async def add(name: str) -> None:  # dependencies first
        if name in added:
            return
        if name not in files:
            take(await ask(file_by_filename=name))
        for dependency in files[name].dependency:
            await add(dependency)
        pool.AddSerializedFile(files[name].SerializeToString())
        added.add(name)

    await add(root)
    await call.done_writing()
    found = pool.FindServiceByName(service)
    return ReflectedService(pool, dict(found.methods_by_name))


@dataclass
class GenericClient:
    channel: grpc.aio.Channel
    reflected: ReflectedService

    def _path(self, method: str) -> str:
        return f"/{SERVICE}/{method}"

    async def subscribe(self, request: Json) -> AsyncGenerator[Json, None]:
        """Subscribe with ``request`` as JSON (what ``grpcurl -d`` takes); yields each
        batch as JSON, every field shown."""
        request_class, batch_class = self.reflected.message_classes("Subscribe")
        call = self.channel.unary_stream(
            self._path("Subscribe"),
            request_serializer=request_class.SerializeToString,
            response_deserializer=batch_class.FromString,
        )(json_format.ParseDict(request, request_class()), timeout=DEADLINE)
        try:
            async for batch in call:
                assert isinstance(batch, batch_class)
                yield json_format.MessageToDict(batch, always_print_fields_with_no_presence=True)
        finally:
            call.cancel()

    async def head(self) -> Json:
        request_class, response_class = self.reflected.message_classes("Head")
        response = await self.channel.unary_unary(
            self._path("Head"),
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )(request_class(), timeout=DEADLINE)
        assert isinstance(response, response_class)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)


@asynccontextmanager
async def generic_client(target: str) -> AsyncIterator[GenericClient]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield GenericClient(channel, await reflect(channel, SERVICE))


def as_http_event(event: Json) -> Json:
    """A reflected Event in JSON as the HTTP feed writes one: the proto3 JSON mapping
    already names the fields alike; int64 comes as a string, content is JSON text, and the
    optional traceparent is there only when the event has one (as on HTTP)."""
    converted = {
        "sequenceNumber": int(event["sequenceNumber"]),
        "occurredAt": event["occurredAt"],
        "name": event["name"],
        "content": json.loads(event["content"]),
    }
    if "traceparent" in event:
        converted["traceparent"] = event["traceparent"]
    return converted


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    """A real special-offers service (`feedline serve`) with its gRPC feed, and 60 events."""
    with restartable_service("special-offers", f"sqlite:///{tmp_path / 'offers.db'}") as served:
        asyncio.run(publish_commands(served.base_url, 60))
        yield served


async def http_events(base_url: str, **params: Any) -> tuple[list[Json], int]:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{base_url}/events", params={"limit": 10000, **params})
        head = await client.get(f"{base_url}/events/head")
    assert answer.status_code == 200
    return answer.json(), head.json()["head"]


async def test_a_reflecting_client_reads_what_the_http_feed_serves(
    service: ServiceProcess,
) -> None:
    expected, http_head = await http_events(service.base_url)
    assert len(expected) == http_head == 60
    async with generic_client(service.grpc_target) as client:
        request_class, _ = client.reflected.message_classes("Subscribe")
        # Built from what the server said, in a pool of this client's own.
        assert request_class.DESCRIPTOR.file.pool is client.reflected.pool
        assert request_class.DESCRIPTOR.full_name == "feedline.feed.v1.SubscribeRequest"

        batches = [batch async for batch in client.subscribe({"start": 1, "limit": 25})]
        assert await client.head() == {"head": str(http_head)}

    assert [len(batch["events"]) for batch in batches] == [25, 25, 10]
    assert [batch["nextStart"] for batch in batches] == ["26", "51", "61"]
    assert {batch["head"] for batch in batches} == {"60"}
    read = [as_http_event(event) for batch in batches for event in batch["events"]]
    assert read == expected


async def test_a_reflecting_client_follows_the_head(service: ServiceProcess) -> None:
    async with generic_client(service.grpc_target) as client:
        stream = client.subscribe({"start": 61, "follow": True})

        async def next_batch() -> Json:
            return await anext(stream)

        caught_up = await next_batch()
        assert caught_up == {"events": [], "head": "60", "nextStart": "61"}
        following = asyncio.create_task(next_batch())
        await asyncio.sleep(0.5)
        assert not following.done(), "a batch came before anything was committed"
        async with httpx.AsyncClient(timeout=30) as http:
            created = await http.post(f"{service.base_url}/offers", json={"description": "new"})
        assert created.status_code == 201
        batch = await asyncio.wait_for(following, 10)
        await stream.aclose()
    expected, _ = await http_events(service.base_url, start=61)
    assert [as_http_event(event) for event in batch["events"]] == expected
    assert expected[0]["content"] == {"offerId": created.json()["id"], "description": "new"}
    assert batch["nextStart"] == "62"
