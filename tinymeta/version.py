"""The package's version (one place: ``tm.__version__``, ``tinymeta --version``)."""

__version__ = "0.1.0"
