"""`python -m billing_devtools.manifests [--write]`: name every manifest that differs from its rendering
(exit 1), or render them again (`make manifests-write`)."""

from __future__ import annotations

import sys

from billing_devtools.manifests import out_of_date, write


def main(arguments: list[str]) -> int:
    if arguments == ["--write"]:
        for path in write():
            print(f"rendered {path}")
        return 0
    if arguments:
        print("usage: python -m billing_devtools.manifests [--write]", file=sys.stderr)
        return 2
    problems = out_of_date()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("run `make manifests-write` and commit the result", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
