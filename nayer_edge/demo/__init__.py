"""The built-in example (``make demo``): a digits teacher trained on scikit-learn's digits, then
``compress``.

Imports anything below it; nothing imports it but the CLI.
"""
