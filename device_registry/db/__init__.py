"""The registry's database: the engine (SQLite or PostgreSQL), one metadata for every room
(``tables``), the migrations that follow it, and ``RegistryStore``, the handle every room opens its
transactions on."""
