"""``python -m eqpdenet``: the command line, through the console script's entry point
(:mod:`_eqpdenet_launch`: an interrupt before the command line takes over is one line and exit
status 130). An interrupt while Python imports the package itself, before this module runs,
is Python's to answer."""

import sys

from _eqpdenet_launch import main

sys.exit(main())
