"""Private PostgreSQL, Redis and RabbitMQ servers on free ports, for tests that break them.

Fault tests must never stop, flush or kill the shared servers other tests use; they start their
own with these context managers, each on free loopback ports, removed with everything they
wrote when the block ends:

    with postgres_cluster() as pg, redis_server() as redis, rabbitmq_node() as mq:
        Infra(pg.url("postgres"), redis.url, mq.url)   # what the services are given
        pg.stop(); pg.start()          # an outage (fast shutdown); pg.kill() crashes it instead
        redis.flush()                  # every key gone, the server stays up
        mq.stop_app(); mq.start_app()  # the broker refuses connections, the node stays up

API (kept stable; other suites build on it):

- `postgres_cluster(version=None, port=None) -> PostgresCluster`: `pg_createcluster` with trust
  authentication, `fsync` off, started; dropped at the end. `version` defaults to the newest one
  installed (the highest under the clusters' configuration directory). Methods: `url(database)`,
  `start()`, `stop()` (fast shutdown: sessions ended, clean), `kill()` (immediate shutdown: no
  checkpoint, crash recovery at the next start), `restart()`, `running`.
- `redis_server(port=None) -> RedisServer`: `redis-server` without persistence. Methods: `url`,
  `start()`, `stop()` (SIGTERM), `kill()` (SIGKILL), `restart()`, `flush()` (FLUSHALL),
  `running`. Without persistence a stopped or killed server comes back empty.
- `rabbitmq_node(port=None, dist_port=None) -> RabbitMQNode`: a node with its own name, AMQP
  and distribution ports, configuration, plugins (none: no management), Erlang cookie and
  mnesia/log directories under a temporary folder. Methods: `url`, `start()`, `stop()`
  (`rabbitmqctl stop`: the node halts), `kill()` (SIGKILL of the node), `restart()`,
  `stop_app()` / `start_app()` (the broker application only: connections refused, the node
  and its definitions stay; the usual way to make an outage), `running`.
- `outage(server)`: async context manager for use inside a test's event loop: the server is
  unavailable inside the block (`stop_app` for RabbitMQ, `stop` otherwise) and started after.

Every method blocks until the server has reached the state (start: accepting connections), so
async code calls them through `asyncio.to_thread` (as `outage` does) to keep its loop running.
Every start after the first reuses the same ports, so clients reconnect to the same URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from billing_devtools.testing.processes import free_port

POSTGRES_CONFIG_ROOT = Path("/etc/postgresql")
# Debian/Ubuntu install the real RabbitMQ scripts here; their /usr/sbin wrappers switch to the
# rabbitmq user and its cookie, which a private node must not share.
RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT = 90.0


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT) -> str:
    done = subprocess.run(  # noqa: S603 - fixed programs, arguments built here
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until(condition: str, check: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{condition} not reached within {timeout}s")
        time.sleep(0.05)


def _unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{os.urandom(3).hex()}"


@dataclass
class PostgresCluster:
    """A cluster made by `pg_createcluster`, owned by the test; trust authentication on loopback."""

    version: str
    name: str
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return _accepting(self.port)

    def start(self) -> None:
        _run("pg_ctlcluster", self.version, self.name, "start")
        _wait_until(f"PostgreSQL {self.name} accepting", lambda: self.running)

    def stop(self) -> None:
        _run("pg_ctlcluster", self.version, self.name, "stop", "-m", "fast")

    def kill(self) -> None:
        _run("pg_ctlcluster", self.version, self.name, "stop", "-m", "immediate")

    def restart(self) -> None:
        self.stop()
        self.start()

    def _create(self) -> None:
        _run(
            "pg_createcluster", self.version, self.name, "-p", str(self.port), "--start-conf=manual",
            "-o", "fsync=off", "-o", "synchronous_commit=off", "-o", "full_page_writes=off",
            "-o", "max_connections=300",
            "--", "--auth=trust",
        )  # fmt: skip

    def _drop(self) -> None:
        _run("pg_dropcluster", "--stop", self.version, self.name)


def _newest_postgres_version() -> str:
    versions = sorted(
        (entry.name for entry in POSTGRES_CONFIG_ROOT.iterdir() if entry.name.isdigit()), key=int
    )
    if not versions:
        raise RuntimeError(f"no PostgreSQL version under {POSTGRES_CONFIG_ROOT}")
    return versions[-1]


@contextlib.contextmanager
def postgres_cluster(version: str | None = None, port: int | None = None) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(
        version or _newest_postgres_version(), _unique_name("test"), port or free_port()
    )
    cluster._create()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster._drop()


@dataclass
class RedisServer:
    port: int
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None and _accepting(self.port)

    def start(self) -> None:
        self._process = subprocess.Popen(  # noqa: S603
            [  # noqa: S607 - found on PATH like every server these tests start
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_until(f"redis-server on {self.port} accepting", lambda: self.running)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        _run("redis-cli", "-p", str(self.port), "FLUSHALL")

    def _end(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._process.send_signal(sig)
        self._process.wait(30)
        self._process = None


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[RedisServer]:
    server = RedisServer(port or free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _rabbitmq_script(name: str) -> str:
    own = RABBITMQ_SCRIPTS / name
    if own.exists():
        return str(own)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found")
    return found


@dataclass
class RabbitMQNode:
    """A node of its own (name, ports, cookie, files); guest/guest is allowed from loopback."""

    node: str
    port: int
    dist_port: int
    base: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None and _accepting(self.port)

    @property
    def _env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.base),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _ctl(self, *args: str) -> str:
        return _run(_rabbitmq_script("rabbitmqctl"), "-n", self.node, *args, env=self._env)

    def start(self) -> None:
        log = (self.base / "server.out").open("ab")
        try:
            self._process = subprocess.Popen(  # noqa: S603
                [_rabbitmq_script("rabbitmq-server")],
                env=self._env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        _wait_until(f"RabbitMQ {self.node} accepting", self._accepting_or_died)
        if self._process.poll() is not None:
            raise RuntimeError(f"RabbitMQ {self.node} exited; see {self.base / 'server.out'}")
        self._ctl("await_startup")

    def _accepting_or_died(self) -> bool:
        return self._process is None or self._process.poll() is not None or _accepting(self.port)

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._ctl("stop")
        self._process.wait(60)
        self._process = None

    def kill(self) -> None:
        """SIGKILL of the Erlang VM and its helpers (the start script's whole process group)."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(30)
        self._process = None
        # The VM is the script's child: it may still hold its ports for a moment.
        _wait_until(
            f"RabbitMQ {self.node} gone",
            lambda: not _accepting(self.port) and not _accepting(self.dist_port),
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop_app(self) -> None:
        self._ctl("stop_app")

    def start_app(self) -> None:
        self._ctl("start_app")
        self._ctl("await_startup")
        _wait_until(f"RabbitMQ {self.node} accepting", lambda: _accepting(self.port))


@contextlib.contextmanager
def rabbitmq_node(port: int | None = None, dist_port: int | None = None) -> Iterator[RabbitMQNode]:
    with tempfile.TemporaryDirectory(prefix="rabbitmq-node-") as base_dir:
        base = Path(base_dir)
        (base / "rabbitmq.conf").write_text("loopback_users = none\n")
        (base / "advanced.config").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")
        node = RabbitMQNode(
            f"{_unique_name('test')}@localhost", port or free_port(), dist_port or free_port(), base
        )
        node.start()
        try:
            yield node
        finally:
            try:
                node.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                node.kill()


@contextlib.asynccontextmanager
async def outage(server: PostgresCluster | RedisServer | RabbitMQNode) -> AsyncIterator[None]:
    """The server is unavailable inside the block, and serving again after it."""
    if isinstance(server, RabbitMQNode):
        await asyncio.to_thread(server.stop_app)
        try:
            yield
        finally:
            await asyncio.to_thread(server.start_app)
        return
    await asyncio.to_thread(server.stop)
    try:
        yield
    finally:
        await asyncio.to_thread(server.start)
