"""`make run`: every service of services.toml as a separate process against the local servers.

Each gets its own schema and login role (provisioned with the local superuser), its own
gRPC and metrics port, the development key set (public keys only) and its outgoing token as a file.
The development key pair is made once in a git-ignored folder; an operator token is printed.
Every service reads the suite's test clock (`<PREFIX>_TEST_CLOCK`), with short polls so that a
simulated day passes in about a second. Once all are SERVING, the demo (`python -m demo`, a
development tool outside the services) seeds a company and bills a quarter, unless
BILLING_DEMO=0 (`make run DEMO=0`). BILLING_RESET=1 (`make run RESET=1`) starts over: what earlier
runs left behind is dropped first.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from billing_common import db, tokens
from billing_common.settings import CommonSettings
from billing_devtools.services import CONSOLE, SERVICES
from billing_devtools.testing.infra import drop_leftovers
from billing_devtools.testing.processes import wait_until_serving

DEV_KEYS = Path(os.environ.get("BILLING_DEV_KEYS", ".dev-keys")).resolve()
DEV_PAGE_TOKEN_KEY = os.environ.get("BILLING_DEV_PAGE_TOKEN_KEY", "development-only-page-token-key-012345")
ADMIN_URL = os.environ.get("BILLING_DEV_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_CLOCK = os.environ.get("BILLING_DEV_TEST_CLOCK", "true")
DEMO = os.environ.get("BILLING_DEMO", "1") not in ("0", "false", "no", "off")
RESET = os.environ.get("BILLING_RESET", "0") not in ("", "0", "false", "no", "off")
# On the test clock: polls short enough that a simulated day passes in about a second, ACH
# clearing in simulated days, and the secret that signs the sandbox's ACH notices to our webhook.
TEST_CLOCK_SETTINGS = {
    "RECURRING_SCHEDULER_INTERVAL": "1s",
    "RECURRING_WORKER_IDLE_POLL": "0.05s",
    "DUNNING_WORKER_POLL_INTERVAL": "0.05s",
    "GATEWAY_JANITOR_INTERVAL": "1s",
    "GATEWAY_SANDBOX_ACH_CLEARS_AFTER": "2d",
    "GATEWAY_SANDBOX_WEBHOOK_SECRETS": "whsec_sandbox_development_only_0123456789",
    "TIER_WORKER_POLL_INTERVAL": "0.1s",
    # One nightly full scan instead of hourly scans of each kind: every simulated day would scan thrice.
    "TIER_SCAN_SCHEDULE_FULL": "0 2 * * *",
    "TIER_SCAN_SCHEDULE_SSO": "",
    "TIER_SCAN_SCHEDULE_API": "",
}
# The demo's Stripe customers pay through a local server that speaks Stripe's wire format.
DEMO_STRIPE_PORT = int(os.environ.get("BILLING_DEV_STRIPE_PORT", "12111"))
DEMO_STRIPE_KEY = "sk_test_demo_local_0123456789abcdef"


def dev_signing_key() -> tokens.SigningKey:
    """The development key pair: made on first use, kept so earlier tokens stay valid."""
    private_key = DEV_KEYS / "signing-key.pem"
    if not private_key.exists():
        tokens.new_key(private_key, DEV_KEYS / "jwks.json")
    return tokens.SigningKey.from_pem(private_key.read_bytes())


def service_env(
    name: str, prefix: str, grpc_port: int, metrics_port: int, key: tokens.SigningKey
) -> dict[str, str]:
    role = name.replace("-", "_")
    token_file = DEV_KEYS / "tokens" / f"{name}.jwt"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(tokens.issue(key, name) + "\n", encoding="utf-8")
    env = {
        f"{prefix}_SERVICE_NAME": name,
        f"{prefix}_DATABASE_URL": db.dsn_with_user(ADMIN_URL, role),
        f"{prefix}_DB_ADMIN_URL": ADMIN_URL,
        f"{prefix}_DB_SCHEMA": role,
        f"{prefix}_GRPC_HOST": "127.0.0.1",
        f"{prefix}_GRPC_PORT": str(grpc_port),
        f"{prefix}_METRICS_PORT": str(metrics_port),
        f"{prefix}_AUTH_JWKS": str(DEV_KEYS / "jwks.json"),
        f"{prefix}_AUTH_TOKEN_FILE": str(token_file),
        f"{prefix}_PAGE_TOKEN_KEYS": DEV_PAGE_TOKEN_KEY,
        f"{prefix}_TEST_CLOCK": TEST_CLOCK,
        **{name: value for name, value in TEST_CLOCK_SETTINGS.items() if name.startswith(f"{prefix}_")},
    }
    for other, _, _, port, _ in SERVICES:
        env[f"{prefix}_{other.upper().replace('-', '_')}_ADDR"] = f"127.0.0.1:{port}"
    return env


CONSOLE_PEOPLE = {"alice": "operator", "bob": "finance"}


def console_env(key: tokens.SigningKey) -> tuple[dict[str, str], dict[str, str]]:
    """The console's settings, and the dev sign-ins (made once, kept in the git-ignored key folder)."""
    name, prefix, _, http_port, metrics_port = CONSOLE
    passwords_file, users_file = DEV_KEYS / "console-passwords", DEV_KEYS / "console-users"
    if not passwords_file.exists():
        passwords = {person: secrets.token_urlsafe(16) for person in CONSOLE_PEOPLE}
        passwords_file.write_text("".join(f"{p} {w}\n" for p, w in passwords.items()), encoding="utf-8")
        # Hashed by the console's own tool: libs/common imports no service.
        lines = [
            subprocess.run(  # noqa: S603
                [sys.executable, "-m", "console.entrypoints.passwords", person, CONSOLE_PEOPLE[person]],
                input=f"{password}\n",
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for person, password in passwords.items()
        ]
        users_file.write_text("".join(lines), encoding="utf-8")
    passwords = dict(line.split() for line in passwords_file.read_text(encoding="utf-8").splitlines())
    token_file = DEV_KEYS / "tokens" / f"{name}.jwt"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(tokens.issue(key, name) + "\n", encoding="utf-8")
    env = {
        f"{prefix}_HTTP_HOST": "127.0.0.1",
        f"{prefix}_HTTP_PORT": str(http_port),
        f"{prefix}_METRICS_PORT": str(metrics_port),
        f"{prefix}_AUTH_TOKEN_FILE": str(token_file),
        f"{prefix}_USERS_FILE": str(users_file),
        f"{prefix}_COOKIE_SECURE": "false",
        f"{prefix}_TEST_CLOCK": TEST_CLOCK,
        **{
            f"{prefix}_{other.upper().replace('-', '_')}_ADDR": f"127.0.0.1:{port}"
            for other, _, _, port, _ in SERVICES
        },
    }
    return env, passwords


async def start_over(admin_url: str, redis_url: str, amqp_url: str, names: list[str], clock_key: str) -> None:
    """Drop what earlier runs of the services `names` left: each one's schema (tables, migrations),
    its Redis keys (counters, locks, sessions, cached views), its event queues, and the suite's
    test clock. The next start migrates empty schemas; the demo seeds its company again."""
    await drop_leftovers(
        admin_url,
        redis_url,
        amqp_url,
        schemas=[name.replace("-", "_") for name in names],
        key_patterns=[*(f"{name}:*" for name in names), clock_key],
        queues=[f"{name}.events{suffix}" for name in names for suffix in ("", ".retry", ".dlq")],
    )


def main() -> None:
    key = dev_signing_key()
    if RESET:
        defaults = CommonSettings()
        names = [name for name, *_ in [*SERVICES, CONSOLE]]
        asyncio.run(
            start_over(ADMIN_URL, defaults.redis_url, defaults.amqp_url, names, defaults.test_clock_key)
        )
        print("started over: the services' schemas, Redis keys, queues and test clock are dropped")
    processes: list[subprocess.Popen[bytes]] = []
    demo_env: dict[str, str] = {}
    if DEMO:
        stripe = ["-m", "demo.stripe_local", "--port", str(DEMO_STRIPE_PORT), "--api-key", DEMO_STRIPE_KEY]
        processes.append(subprocess.Popen([sys.executable, *stripe]))  # noqa: S603
        demo_env = {
            "GATEWAY_STRIPE_API_BASE": f"http://127.0.0.1:{DEMO_STRIPE_PORT}",
            "GATEWAY_STRIPE_API_KEYS": f"default={DEMO_STRIPE_KEY}",
        }
    for name, prefix, package, grpc_port, metrics_port in SERVICES:
        env = {**os.environ, **service_env(name, prefix, grpc_port, metrics_port, key), **demo_env}
        processes.append(subprocess.Popen([sys.executable, "-m", f"{package}.entrypoints.main"], env=env))  # noqa: S603
        print(f"{name:<16} gRPC 127.0.0.1:{grpc_port}   metrics http://127.0.0.1:{metrics_port}/metrics")
    env, passwords = console_env(key)
    processes.append(
        subprocess.Popen([sys.executable, "-m", "console.entrypoints.main"], env={**os.environ, **env})
    )
    print(f"{'console':<16} http://127.0.0.1:{CONSOLE[3]}/   metrics http://127.0.0.1:{CONSOLE[4]}/metrics")
    print(_sign_ins(passwords))
    print(f"\noperator token, valid {tokens.PERSON_LIFETIME} (Authorization: Bearer ...):")
    print(tokens.issue(key, "operator"))
    issuer = f"python -m billing_common.tokens issue --private-key {DEV_KEYS}/signing-key.pem"
    print(f"more: {issuer} --subject <caller>")
    print("\ntry: grpcurl -plaintext 127.0.0.1:50052 grpc.health.v1.Health/Check")
    print("stop with Ctrl-C\n", flush=True)

    def stop(*_: object) -> None:
        for process in processes:
            process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        asyncio.run(_all_serving())
        print(f"all {len(SERVICES)} services are SERVING", flush=True)
        if DEMO:
            demo = [sys.executable, "-m", "demo", "--private-key", str(DEV_KEYS / "signing-key.pem")]
            subprocess.run(demo, check=False)  # noqa: S603
            print(f"\nthe console: http://127.0.0.1:{CONSOLE[3]}/", flush=True)
            print(_sign_ins(passwords))
            print("stop with Ctrl-C", flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    finally:
        stop()
        for process in processes:
            process.wait(timeout=30)


def _sign_ins(passwords: dict[str, str]) -> str:
    return "\n".join(
        f"{'':<16} sign in as {person} ({CONSOLE_PEOPLE[person]}), password {password}"
        for person, password in passwords.items()
    )


async def _all_serving() -> None:
    """A first start migrates every schema at once; on a busy machine that has taken minutes."""
    await asyncio.gather(*(wait_until_serving(f"127.0.0.1:{port}", 600) for _, _, _, port, _ in SERVICES))


if __name__ == "__main__":
    main()
