"""The application on top of the library: typed configuration files, training and evaluation,
sweeps (the paper's protocol), the validation study, reports, figures and the ``eqpdenet``
command line. Nothing in the library imports this package.
"""
