"""The demo `make run` plays: a company seeded through the services' APIs, then a quarter billed
on the suite's test clock, a day at a time, with a summary read back from the services.

A development tool, kept out of the services' packages; `python -m demo --help`.
"""
