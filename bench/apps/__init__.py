"""The WSGI apps the benchmark serves; every server gets the same ones."""
