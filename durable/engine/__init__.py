"""The parts :class:`durable.Runtime` is composed of, one module per concern (see
:mod:`durable.engine.core`). Import the runtime from :mod:`durable.runtime`; nothing here is
public API."""
