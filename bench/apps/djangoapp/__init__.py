"""A small Django project for the ``django`` workload: a view, a template, the ORM on SQLite."""
