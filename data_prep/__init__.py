"""The offline stage: dataset readers and `fergate prep` (face pipeline -> ArrayRecord shards).

It builds on the library (`fergate.face`, `fergate.video`, the record schema) and adds to the
`fergate` command through entry points (pyproject.toml, `fergate.plugins`); fergate never
imports it.
"""
