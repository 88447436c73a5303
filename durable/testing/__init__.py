"""Test helpers for code that uses durable, and for authors of storage backends.

:class:`BackendContractTests` is the contract every
:class:`~durable.backends.PersistentBackend` must honour, as a pytest suite to subclass: see
:mod:`durable.testing.contract` for how to run it against your backend. This package imports
pytest and pytest-asyncio; import it from test code only.
"""

from durable.testing.contract import BackendContractTests

__all__ = ["BackendContractTests"]
