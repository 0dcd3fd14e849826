"""Test fixtures over real PostgreSQL, Redis and RabbitMQ (local servers, or testcontainers)."""
