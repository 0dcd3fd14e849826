from billing_common.testing.private_servers import private_postgres, private_redis  # noqa: F401 - fixtures
