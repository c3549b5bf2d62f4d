"""Mitogen's linear strategy, from the mitogen package installed in the control venv (see ansible.cfg)."""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
