"""Code of one's own on the command line: the modules named in ``EQPDENET_PLUGINS``.

A model family, data set, scenario, invariant set, right-hand side or M2 term of one's own is
registered by importing the module that registers it (``MODELS.register(...)`` and the like, at
its top level). The Python API sees it once the user's script has imported it; the command
line cannot know the module, so it imports the ones named in the environment variable
:data:`PLUGINS_VARIABLE`, comma-separated, before it reads its arguments::

    EQPDENET_PLUGINS=mylab.models,mylab.data eqpdenet train --model mynet --dataset toy

The modules are imported as ``import`` would (``sys.path``: the current folder for ``python -m``,
installed packages, ``PYTHONPATH``). The variable reaches every process the command starts on
this machine: the workers of ``--jobs`` import the same modules before they unpickle their work
(:mod:`eqpdenet.app.workers`), and every ``torchrun`` rank runs the command line. Each Ray
task is given the driver's module names and imports them before its run
(:mod:`eqpdenet.app.distributed`): a module must be importable on every node of the cluster.

A name that is not a dotted module name, a module that cannot be found, or one that raises while
it is imported is one :class:`~eqpdenet.errors.ConfigError` naming the variable and the module,
before any work.
"""

from __future__ import annotations

import importlib
import os
import re

from ..errors import ConfigError

__all__ = ["PLUGINS_VARIABLE", "import_plugins", "plugin_names"]

#: The environment variable naming the modules to import (comma-separated).
PLUGINS_VARIABLE = "EQPDENET_PLUGINS"

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def plugin_names(value: str | None = None) -> list[str]:
    """The module names in ``value`` (default: the variable's value; none where it is unset or
    empty): comma-separated, spaces around each ignored, empty entries skipped.

    Example:
        >>> plugin_names(" mylab.models, mylab.data ,")
        ['mylab.models', 'mylab.data']
        >>> plugin_names("")
        []
    """
    if value is None:
        value = os.environ.get(PLUGINS_VARIABLE, "")
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        if not _MODULE_NAME.fullmatch(name):
            raise ConfigError(f"{PLUGINS_VARIABLE}: {name!r} is not a module name (dotted Python "
                              f"identifiers, comma-separated, e.g. mylab.models,mylab.data); a "
                              f"file path is not one: put its folder on PYTHONPATH and give the "
                              f"module's name")
    return names


def import_plugins(value: str | None = None) -> list[str]:
    """Import the modules :func:`plugin_names` gives (each once: Python's import caches it);
    returns their names. A ConfigError names the variable and the module where one cannot be
    imported."""
    names = plugin_names(value)
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            missing = error.name or name
            itself = name == missing or name.startswith(missing + ".")
            where = "" if itself else f" (it imports {missing!r}, which is not found)"
            raise ConfigError(f"{PLUGINS_VARIABLE}: cannot import {name!r}{where}: is its folder on "
                              f"PYTHONPATH, or is it installed in this environment?") from None
        except Exception as error:  # the module's own code: said in one line, cause kept
            text = " ".join(str(error).split()) or type(error).__name__
            raise ConfigError(f"{PLUGINS_VARIABLE}: importing {name!r} failed: "
                              f"{type(error).__name__}: {text}") from error
    return names
