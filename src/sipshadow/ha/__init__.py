"""HA roles as data: the pure transition table the HA shell (`runtime.ha`) executes."""

from sipshadow.ha.roles import Role, RoleMachine

__all__ = ["Role", "RoleMachine"]
