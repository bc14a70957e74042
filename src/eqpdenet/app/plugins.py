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
before any work. So is a module that exits while it is imported (``sys.exit()``, or argparse
parsing eqpdenet's own arguments: a script without an ``if __name__ == "__main__":`` guard), which
would otherwise end the command with the script's status, having done nothing; only
``KeyboardInterrupt`` passes through.
"""

from __future__ import annotations

import importlib
import os
import re

from ..errors import ConfigError

__all__ = ["PLUGINS_VARIABLE", "PLUGIN_HINT", "import_plugins", "is_unregistered", "plugin_names",
           "unregistered_hint"]

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
    imported, raises, or exits while it is imported (module docstring)."""
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
        except SystemExit as error:
            # Not an Exception: uncaught, it would end eqpdenet (with status 0 for sys.exit())
            # as if the command had run.
            raise ConfigError(f"{PLUGINS_VARIABLE}: importing {name!r} exited (SystemExit"
                              f"{'' if error.code is None else f'({error.code!r})'}: sys.exit() "
                              f"or argparse at its top level): guard the script's code with "
                              f"'if __name__ == \"__main__\":' so that importing it only "
                              f"registers") from None
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # the module's own code: said in one line, cause kept
            text = " ".join(str(error).split()) or type(error).__name__
            raise ConfigError(f"{PLUGINS_VARIABLE}: importing {name!r} failed: "
                              f"{type(error).__name__}: {text}") from error
    return names


#: What :func:`unregistered_hint` adds to a message naming a registered name this process lacks.
PLUGIN_HINT = ("(registered by a plugin? this process has not imported it: name the module that "
               "registers it in EQPDENET_PLUGINS)")


def unregistered_hint(error: Exception) -> str:
    """``error``'s text on one line, and where it is an unknown registered name (``unknown model
    'mynet'``), the likely cause: a plugin that registers it, not imported in this process. Used
    wherever a saved configuration is read back (a checkpoint, a sweep's ``config.toml``), which
    may name a plugin's model kind, data set or scenario."""
    text = " ".join(str(error).split())
    if is_unregistered(text) and PLUGIN_HINT not in text:  # load_toml may have added it
        text += " " + PLUGIN_HINT
    return text


def is_unregistered(text: str) -> bool:
    """Whether ``text`` (an error's) names an unknown registered name: the registries' "unknown
    <what> '<name>'; available: ..." (not an unknown field or option, which no plugin adds)."""
    return re.search(r"\bunknown [\w ]+ '[^']*'; available", text) is not None
