from __future__ import annotations


class StoreError(Exception):
    """Base of everything the store raises; str() is fit to show an operator."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """The change contradicts what is stored (a name already taken, a row still in use)."""


class InvalidValue(StoreError):
    """A value the store cannot hold (a number beyond 64 bits, text that is not Unicode)."""


class StoreUnavailable(StoreError):
    """The store cannot be used now (locked by another process for too long, disk error)."""


class SchemaTooNew(StoreError):
    """The store was migrated by a newer ispd than this one."""
