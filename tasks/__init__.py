"""Prefect tasks: thin wrappers around vpo_core with the project's cache, retry and
artifact conventions (see tasks.caching)."""

import logging

# vpo_core reports progress at INFO (vpo_core.progress); Prefect routes the logger to the
# terminal and the run log (PREFECT_LOGGING_EXTRA_LOGGERS) but leaves its level at the
# root's WARNING.
logging.getLogger("vpo_core").setLevel(logging.INFO)
