# sync_producer.py
from atomicqueues import SyncClient

with SyncClient() as client:  # the same calls, without async (Django, Flask, scripts)
    job_id = client.enqueue("user", "bob@example.com", "balance")
    print(client.result(job_id, timeout=10))  # 42
