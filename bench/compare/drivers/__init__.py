"""One driver per job system: `NAME_driver.py` defines the system's no-op task and `DRIVER`.

Each module imports only the standard library, `compare.driver`, `compare.marks` and its own
system, and is loaded only inside that system's virtualenv (AtomicQueues' in the project's).
"""
