"""Evaluation harness: suites, checkers' results, runs.

``suites`` reads and validates suite files (a named list of cases, each a prompt and a
``check``); the checkers themselves are plugins (``register_checkers``).
"""
