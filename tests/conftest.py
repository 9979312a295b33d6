"""Fixtures live in tests/fix_*.py plugins, one concern each (as psycopg's suite does)."""

pytest_plugins = ["tests.fix_stack", "tests.fix_store", "tests.fix_line", "tests.fix_onboard", "tests.fix_containers"]
