"""Hatchling build hook: compiles the optional fast path ``otel_pg_exporter.export._fastrow``.

Wheel and editable builds cythonize ``_fastrow.pyx`` and compile it with setuptools'
``build_ext`` (in place for an editable install, so the checkout imports it; into a scratch
folder for a wheel, which then carries the ``.so`` and a platform tag). When Cython, the
compiler or the compile fails, the build goes on as pure Python after one printed line; the
package then maps every span with the reference mapper (``fastpath.FAST_PATH_STATUS`` says so).
Set ``OTEL_PG_EXPORTER_BUILD_EXTENSION=false`` to skip the compile on purpose.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MODULE = "otel_pg_exporter.export._fastrow"
SOURCE = Path("otel_pg_exporter", "export", "_fastrow.pyx")
NOTICE = "otel_pg_exporter: "


def _say(line: str) -> None:
    print(NOTICE + line, file=sys.stderr, flush=True)


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Builds the compiled fast path, or falls back to a pure-Python build."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Compile the extension for a wheel (``standard``) or an editable install."""
        if self.target_name != "wheel":
            return
        self._scratch: str | None = None
        root = Path(self.root)
        editable = version == "editable"
        in_place = root / SOURCE.with_name("_fastrow" + _suffix())
        if os.environ.get("OTEL_PG_EXPORTER_BUILD_EXTENSION", "").lower() in _OFF:
            _say("compiled fast path skipped (OTEL_PG_EXPORTER_BUILD_EXTENSION); pure Python")
            if editable:
                in_place.unlink(missing_ok=True)
            return
        try:
            built = self._compile(root, in_place=editable)
        except Exception as exc:  # any failure means: build without it
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            _say(
                "compiled fast path not built "
                f"({type(exc).__name__}: {reason}); spans will be mapped in pure Python"
            )
            if editable:  # an old build must not outlive a failed one
                in_place.unlink(missing_ok=True)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if not editable:
            build_data["force_include"][str(built)] = SOURCE.with_name(built.name).as_posix()
        _say(f"compiled fast path built: {built.name}")

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the scratch folder of a wheel build."""
        scratch = getattr(self, "_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    def _compile(self, root: Path, *, in_place: bool) -> Path:
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
        from setuptools.command.build_ext import build_ext

        self._scratch = tempfile.mkdtemp(prefix="otel-pg-build-")
        previous = Path.cwd()
        os.chdir(root)  # build_ext and cythonize work with paths relative to the project
        try:
            # No debug information: it would make the module ten times larger.
            flags = [] if os.name == "nt" else ["-g0"]
            extensions = cythonize(
                [Extension(MODULE, [SOURCE.as_posix()], extra_compile_args=flags)],
                compiler_directives={"language_level": "3"},
                quiet=True,
                force=True,
            )
            command = build_ext(
                Distribution({"name": "otel_pg_exporter", "ext_modules": extensions})
            )
            command.inplace = in_place
            command.build_temp = os.path.join(self._scratch, "temp")
            command.build_lib = os.path.join(self._scratch, "lib")
            command.ensure_finalized()
            command.run()
            built = Path(command.get_ext_fullpath(MODULE)).resolve()
        finally:
            os.chdir(previous)
        if not built.is_file():
            raise FileNotFoundError(f"build_ext made no {built.name}")
        return built


_OFF = ("0", "false", "off", "no")


def _suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")
