"""VPO pipeline library: stage logic, backends and schemas. Never imports Prefect."""

__version__ = "0.1.0"
