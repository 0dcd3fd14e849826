"""The suite's development and test tools: `make run`, the pytest plugin, test servers and fakes,
the import contracts expanded over services.toml. Never imported by a service (an import contract)."""
