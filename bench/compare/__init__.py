"""Benchmarks of AtomicQueues against the job queues people would pick instead, and Redis itself.

Why this package exists: people choose a job system on evidence. `bench/report.py` runs every
system here against one private redis-server on one machine, in one run, and writes
docs/benchmarks.md. The competitors are installed into virtualenvs of their own (never into the
project's environment) and run in child processes; each is driven by a small module in
`compare/drivers/` behind the one interface of `compare/driver.py`.

Modules that run inside a competitor's virtualenv (`driver.py`, `marks.py`, `drivers/*`) use the
standard library and that competitor only; the rest runs in the project's environment.
"""
