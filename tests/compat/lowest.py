"""Print pip constraints that pin every direct dependency to the lowest version it allows.

``make test-compat`` installs the package with ``pip install --constraint`` on this output, so
the compatibility run tests exactly the floors ``pyproject.toml`` declares: the runtime
dependencies, those of the extras named on the command line (default: ``examples``) and the
OpenTelemetry packages of the ``test`` extra (the instrumentation the tests drive; the test
tools themselves are not under test).

A name declared more than once gets its highest floor (the ``sentry`` extra raises the SDK's,
and with it the API's: each SDK release needs the API of the same release).
OpenTelemetry's contrib packages (``opentelemetry-instrumentation*``) are released in step
with the SDK, 0.(N+21)b0 beside 1.N, and each needs its own SDK release: they are pinned to
the release that pairs with the SDK's floor when that is above their own. A requirement
without a ``>=``, ``~=`` or ``==`` floor is left unconstrained.

    python tests/compat/lowest.py [extra ...] > constraints.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: run.sh installs tomli for this script
    import tomli as tomllib

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")
_FLOOR = re.compile(r"(?:>=|==|~=)\s*([^,\s]+)")
_PROJECT = "otel-pg-exporter"
_SDK = "opentelemetry-sdk"
_API = "opentelemetry-api"
_CONTRIB_PREFIX = "opentelemetry-instrumentation"
_CONTRIB_OFFSET = 21  # instrumentation 0.48b0 is released beside opentelemetry-sdk 1.27


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("b", maxsplit=1)[0]))


def floors(pyproject: Path, extras: list[str]) -> dict[str, str]:
    """Name → lowest allowed version for the runtime requirements and the named extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        requirements += optional[extra]
    requirements += [r for r in optional.get("test", []) if r.startswith("opentelemetry-")]
    found: dict[str, str] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"cannot read the requirement {requirement!r}")
        name = match.group(1).lower().replace("_", "-")
        floor = _FLOOR.search(match.group(3))
        if name == _PROJECT or floor is None:
            continue
        if name not in found or _key(floor.group(1)) > _key(found[name]):
            found[name] = floor.group(1)
    if _SDK in found and _API in found and _key(found[_SDK]) > _key(found[_API]):
        found[_API] = found[_SDK]  # each SDK release needs the API of the same release
    if _SDK in found:
        sdk_minor = _key(found[_SDK])[1]
        paired = f"0.{sdk_minor + _CONTRIB_OFFSET}b0"
        for name, version in found.items():
            if name.startswith(_CONTRIB_PREFIX) and _key(paired) > _key(version):
                found[name] = paired
    return found


def main(argv: list[str]) -> int:
    extras = argv or ["examples"]
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    for name, version in sorted(floors(pyproject, extras).items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
