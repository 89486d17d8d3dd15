"""Prefect tasks: thin wrappers around vpo_core with the project's cache, retry and
artifact conventions (see tasks.caching)."""
