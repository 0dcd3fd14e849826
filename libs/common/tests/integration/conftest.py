from billing_common.testing.private_servers import (  # noqa: F401 - fixtures
    private_postgres,
    private_rabbitmq,
    private_redis,
)
