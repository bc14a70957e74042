"""The ``eqpdenet`` command line. Subcommands are added by the modules that own them."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _info(args: argparse.Namespace) -> int:
    import torch

    from .invariants import available_invariant_sets, get_invariant_set
    from .models import FCNN, EqPdeNet, count_parameters
    from .stencils import available_stencils

    print(f"eqpdenet {__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"stencils: {', '.join(available_stencils())}")
    for name in available_invariant_sets():
        print(get_invariant_set(name))
    print("parameters (paper layer):  h  EqPdeNet  FCNN")
    for hidden in (16, 32, 64, 128, 256):
        print(f"{hidden:>29} {count_parameters(EqPdeNet(hidden)):>9} {count_parameters(FCNN(hidden)):>6}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eqpdenet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"eqpdenet {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="versions, stencils, invariant sets, parameter counts")
    info.set_defaults(handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
