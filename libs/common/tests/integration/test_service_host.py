import asyncio
import contextlib
import dataclasses
import itertools
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import grpc
import prometheus_client
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from billing_common import auth, context, db
from billing_common.grpc_client import MAX_RECONNECT_BACKOFF_MS, open_channel
from billing_common.grpc_server import CORRELATION_HEADER
from billing_common.service import Background, Resources, ServiceHost, ServiceParts
from billing_common.settings import CommonSettings
from billing_common.tokens import SigningKey, issue, write_jwks
from billing_devtools.testing.echo import SERVICE, echo_lifespan, echo_registration, echo_stub
from billing_devtools.testing.plugin import InfraEnv, eventually, running_service, session_signing_key
from billing_devtools.testing.processes import settings_env

NO_MIGRATIONS = Path(__file__).parent / "no-migrations"


@pytest.fixture
async def echo(env: InfraEnv):
    settings = env.settings(CommonSettings, "echo")
    async with running_service(settings, echo_lifespan({"recurring"}), NO_MIGRATIONS) as host:
        yield host


async def test_health_turns_serving_once_dependencies_answer(echo, env: InfraEnv) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            alive = await stub.Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert alive.status == health_pb2.HealthCheckResponse.SERVING
            overall = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            named = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
            return overall.status == named.status == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, timeout=10)


async def test_reflection_lists_the_service(echo) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in responses for s in r.list_services_response.service]
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names


async def test_calls_need_a_token_from_an_allowed_caller(echo, env: InfraEnv) -> None:
    target = f"127.0.0.1:{echo.port}"
    async with open_channel(target) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await echo_stub(anonymous)(b"hi")
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(target, env.token("dunning")) as stranger:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await echo_stub(stranger)(b"hi")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with open_channel(target, env.token("recurring")) as allowed:
        assert await echo_stub(allowed)(b"hi") == b"hi"


async def test_a_deployment_grants_a_caller_by_configuration(env: InfraEnv) -> None:
    settings = env.settings(CommonSettings, "echo", auth_access="Echo+=dunning")
    async with (
        running_service(settings, echo_lifespan({"recurring"}), NO_MIGRATIONS) as host,
        open_channel(f"127.0.0.1:{host.port}", env.token("dunning")) as granted,
        open_channel(f"127.0.0.1:{host.port}", env.token("tier")) as stranger,
    ):
        assert await echo_stub(granted)(b"hi") == b"hi"
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await echo_stub(stranger)(b"hi")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_pod_follows_its_rotated_key_set_and_renewed_token_without_a_restart(
    env: InfraEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "RECHECK_S", 0.0)  # look at the files on every call, not every few seconds
    new_key = SigningKey.generate()
    key_file, token_file = tmp_path / "jwks.json", tmp_path / "token"
    write_jwks(key_file, [session_signing_key().public_jwk(), new_key.public_jwk()])
    token_file.write_text(env.token("recurring"))
    settings = env.settings(
        CommonSettings, "echo", auth_jwks=str(key_file), auth_token="", auth_token_file=str(token_file)
    )
    async with running_service(settings, echo_lifespan({"recurring", "dunning"}), NO_MIGRATIONS) as host:
        assert host.resources is not None
        target = f"127.0.0.1:{host.port}"
        async with (
            open_channel(target, host.resources.outgoing_token) as own,
            open_channel(target, env.token("recurring")) as old_key,
        ):
            assert (await echo_stub(own)(b"whoami")).split()[0] == b"recurring"
            renewed = tmp_path / "token.new"
            renewed.write_text(issue(new_key, "dunning"))
            renewed.replace(token_file)
            assert (await echo_stub(own)(b"whoami")).split()[0] == b"dunning"
            assert await echo_stub(old_key)(b"hi") == b"hi"

            write_jwks(key_file, [new_key.public_jwk()])  # the old key retired
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo_stub(old_key)(b"hi")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert (await echo_stub(own)(b"whoami")).split()[0] == b"dunning"


async def test_calls_carry_the_token_and_the_callers_correlation_id(echo, env: InfraEnv) -> None:
    async with open_channel(f"127.0.0.1:{echo.port}", env.token("recurring")) as channel:
        call = echo_stub(channel)
        token = context.correlation_id.set("run-2026-12-01")
        try:
            assert await call(b"whoami") == b"recurring run-2026-12-01"
            # Metadata the caller passes travels too, but cannot replace the stamped identity.
            forged = (("authorization", "Bearer forged"), (CORRELATION_HEADER, "other"), ("x-extra", "1"))
            assert await call(b"whoami", metadata=forged) == b"recurring run-2026-12-01"
        finally:
            context.correlation_id.reset(token)
        # Outside any request a call still gets a correlation id of its own.
        caller, correlation = (await call(b"whoami")).decode().split()
        assert caller == "recurring" and len(correlation) == 32


async def test_bad_input_is_invalid_argument_with_field_violations(echo, env: InfraEnv) -> None:
    async with open_channel(f"127.0.0.1:{echo.port}", env.token("recurring")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await echo_stub(channel)(b"invalid")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("payload", "must not be the word 'invalid'")
    ]


def handled(code: str) -> float:
    labels = {"service": "echo", "method": "Echo", "code": code}
    return prometheus_client.REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_every_call_is_counted_under_its_method_and_code(echo, env: InfraEnv) -> None:
    ok, invalid = handled("OK"), handled("INVALID_ARGUMENT")
    async with open_channel(f"127.0.0.1:{echo.port}", env.token("recurring")) as channel:
        call = echo_stub(channel)
        for payload in (b"a", b"invalid", b"b", b"c", b"invalid"):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call(payload)
    assert (handled("OK") - ok, handled("INVALID_ARGUMENT") - invalid) == (3, 2)


def called(code: str) -> float:
    labels = {"service": SERVICE, "method": "Echo", "code": code}
    return prometheus_client.REGISTRY.get_sample_value("grpc_client_handled_total", labels) or 0.0


async def test_outgoing_calls_are_timed_and_counted_by_method_and_code(echo, env: InfraEnv) -> None:
    ok, internal = called("OK"), called("INTERNAL")
    async with open_channel(f"127.0.0.1:{echo.port}", env.token("recurring")) as channel:
        call = echo_stub(channel)
        for payload in (b"a", b"crash", b"b"):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call(payload)
    assert (called("OK") - ok, called("INTERNAL") - internal) == (2, 1)
    labels = {"service": SERVICE, "method": "Echo", "code": "OK"}
    assert prometheus_client.REGISTRY.get_sample_value(
        "grpc_client_handling_seconds_count", labels
    ) == called("OK")


async def test_the_database_pool_is_reported_in_use_idle_and_at_most(echo) -> None:
    registry = prometheus_client.REGISTRY
    most = registry.get_sample_value("billing_db_pool_max_connections")
    in_use = registry.get_sample_value("billing_db_pool_connections", {"state": "in_use"})
    idle = registry.get_sample_value("billing_db_pool_connections", {"state": "idle"})
    assert most is not None and most >= echo.settings.db_pool_max
    assert in_use is not None and idle is not None and in_use + idle >= 1


async def test_failed_and_slow_calls_are_logged_and_quick_successes_only_at_debug(
    env: InfraEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    for slow_after, expected in ((timedelta(seconds=5), []), (timedelta(0), [("INFO", "slow rpc", "OK")])):
        caplog.clear()
        settings = env.settings(CommonSettings, "echo", log_slow_rpc=slow_after)
        async with (
            running_service(settings, echo_lifespan({"recurring"}), NO_MIGRATIONS) as host,
            open_channel(f"127.0.0.1:{host.port}", env.token("recurring")) as channel,
        ):
            stub = echo_stub(channel)
            assert await stub(b"ping") == b"ping"
            with pytest.raises(grpc.aio.AioRpcError):
                await stub(b"invalid")
        logged = [(r.levelname, r.getMessage(), getattr(r, "code", "")) for r in caplog.records]
        assert [line for line in logged if line[2]] == [*expected, ("WARNING", "rpc", "INVALID_ARGUMENT")]


async def test_sigterm_while_waiting_for_the_database_stops_the_process_promptly(env: InfraEnv) -> None:
    settings = env.settings(
        CommonSettings, "echo", database_url="postgresql://echo@127.0.0.1:1/billing", db_admin_url=""
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "billing_devtools.testing.echo",
        env={**os.environ, **settings_env("ECHO", settings)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None

    async def retrying() -> None:
        async for line in process.stdout:  # type: ignore[union-attr]
            if b"waiting for" in line:
                return

    await asyncio.wait_for(retrying(), 60)  # its signal handlers are in place and it retries the database
    assert process.returncode is None
    process.terminate()
    assert await asyncio.wait_for(process.wait(), 10) == 0


def _separate_roles(env: InfraEnv, **overrides: object) -> CommonSettings:
    """Settings of a service whose schema is owned by a migration role apart from its runtime role."""
    runtime = f"echo_{env.run_id}"
    owner = f"{runtime}_owner"
    env.schemas.append(owner)
    return env.settings(
        CommonSettings,
        "echo",
        db_migration_url=db.dsn_with_user(env.infra.postgres_admin_url, owner),
        **overrides,
    )


async def test_migrate_only_provisions_and_migrates_then_exits(env: InfraEnv) -> None:
    settings = _separate_roles(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "billing_devtools.testing.echo",
        "--migrate-only",
        env={**os.environ, **settings_env("ECHO", settings)},
    )

    assert await asyncio.wait_for(process.wait(), 60) == 0
    runtime = await asyncpg.connect(settings.database_url)
    try:
        await db.check_migrated(runtime, settings.schema, db.common_migrations())
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await runtime.execute(f"CREATE TABLE {settings.schema}.intruder (id INT)")
    finally:
        await runtime.close()


async def test_a_service_that_does_not_migrate_waits_for_the_migration_job_then_serves(
    env: InfraEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    job = _separate_roles(env)
    pod = dataclasses.replace(job, migrate_on_start=False, db_admin_url="", db_migration_url="")
    # The roles exist (made by the database's administrators); the schema is not migrated yet.
    await db.provision(
        env.infra.postgres_admin_url, job.schema, f"{job.schema}_owner", runtime_role=job.schema
    )
    host = ServiceHost(pod, echo_lifespan({"recurring"}), NO_MIGRATIONS)
    starting = asyncio.create_task(host.start())
    try:
        await eventually(lambda: "waiting for the schema's migrations" in caplog.text, timeout=30)
        assert not starting.done()

        await ServiceHost(job, echo_lifespan({"recurring"}), NO_MIGRATIONS).migrate()

        await asyncio.wait_for(starting, 30)
        async with open_channel(f"127.0.0.1:{host.port}", env.token("recurring")) as channel:
            assert await echo_stub(channel)(b"hi") == b"hi"
    finally:
        if not starting.done():
            starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        await host.stop()


async def test_clients_are_made_to_reconnect_so_they_reach_pods_added_since(env: InfraEnv) -> None:
    settings = env.settings(CommonSettings, "echo", grpc_max_connection_age=timedelta(milliseconds=500))
    async with (
        running_service(settings, echo_lifespan({"recurring"}), NO_MIGRATIONS) as host,
        open_channel(f"127.0.0.1:{host.port}", env.token("recurring")) as channel,
    ):
        echo = echo_stub(channel)
        peers = set()
        for _ in range(25):
            peers.add(await echo(b"peer"))  # every call answered, across the reconnections
            await asyncio.sleep(0.1)
    # A new connection is a new resolution of the Service's name: pods added since are seen.
    assert len(peers) >= 3


async def _bare_echo_server(port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    echo_registration(set()).add_to_server(None, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def test_a_new_channel_reaches_a_server_restarted_on_a_port_an_older_channel_saw_refused() -> None:
    """Loopback ports are reused between tests: an open channel's refused connection to a stopped
    server must not make a new channel to the server now on that port fail its first call."""
    first, port = await _bare_echo_server(0)
    async with open_channel(f"127.0.0.1:{port}") as older:
        assert await echo_stub(older)(b"before") == b"before"
        await first.stop(None)
        # The older channel keeps reconnecting, refused, its back-off growing (1 s, 1.6 s, 2.6 s...).
        await asyncio.sleep(3)
        second, _ = await _bare_echo_server(port)
        try:
            async with open_channel(f"127.0.0.1:{port}") as newer:
                assert await echo_stub(newer)(b"after") == b"after"
        finally:
            await second.stop(None)


async def test_a_channel_keeps_trying_a_peer_that_is_down_every_few_seconds_not_minutes() -> None:
    """A pod being replaced refuses connections for a while; once it is back, callers holding a
    channel to it must reach it within seconds, not after gRPC's default back-off (up to 2 minutes)."""
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def refuse(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(loop.time())  # every connection attempt is closed at once, as a dead peer
        writer.close()

    peer = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = peer.sockets[0].getsockname()[1]
    try:
        async with open_channel(f"127.0.0.1:{port}") as channel:
            began = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as waited:
                await echo_stub(channel)(b"hello", wait_for_ready=True, timeout=20)
            assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            ended = loop.time()
    finally:
        peer.close()
    instants = [began, *attempts, ended]
    longest_wait = max(later - earlier for earlier, later in itertools.pairwise(instants))
    # Unbounded, the waits grow 1 s, 1.6 s, 2.6 s, 4.1 s, 6.6 s... (20% jitter) within these 20 s.
    assert longest_wait < 2 * MAX_RECONNECT_BACKOFF_MS / 1000, attempts


async def test_the_lifespan_opens_before_serving_and_closes_after_the_drain_and_the_background_work(
    env: InfraEnv,
) -> None:
    seen: list[str] = []
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("background cancelled")
            raise

    async def drain() -> None:
        seen.append("background drained")

    @contextlib.asynccontextmanager
    async def lifespan(_resources: Resources) -> AsyncIterator[ServiceParts]:
        seen.append("opened")
        try:
            yield ServiceParts([echo_registration({"recurring"})], background=[Background(work, drain=drain)])
        finally:
            seen.append("closed")

    host = ServiceHost(env.settings(CommonSettings, "echo"), lifespan, NO_MIGRATIONS)
    await host.start()
    await asyncio.wait_for(started.wait(), 10)
    assert seen == ["opened"]
    await host.stop()
    assert seen == ["opened", "background drained", "background cancelled", "closed"]
