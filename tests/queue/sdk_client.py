"""Test client: one operation of the real ``runpod`` client against lbproxy, printing JSON on its last line.

Usage: sdk_client.py OPERATION '{"endpoint": ..., "key": ..., ...}'. RUNPOD_ENDPOINT_BASE_URL points the
SDK at lbproxy (read at import), as a user would set it.
"""

import json
import sys
import time

import runpod

op, args = sys.argv[1], json.loads(sys.argv[2])
runpod.api_key = args["key"]
endpoint = runpod.Endpoint(args["endpoint"])
out = None

if op == "run_sync":
    out = {"output": endpoint.run_sync(args["input"], timeout=args.get("timeout", 60))}
elif op == "run_status":
    job = endpoint.run(args["input"])
    first = job.status()
    output = job.output(timeout=args.get("timeout", 60))
    out = {"id": job.job_id, "first": first, "output": output, "final": job.status()}
elif op == "stream":
    job = endpoint.run(args["input"])
    out = {"chunks": list(job.stream()), "final": job.status(), "output": job.output(timeout=30)}
elif op == "cancel":
    job = endpoint.run(args["input"])
    deadline = time.time() + 30
    while job.status() != "IN_PROGRESS" and time.time() < deadline:
        time.sleep(0.05)
    answer = job.cancel()
    out = {"id": job.job_id, "answer": answer, "final": job.status()}
elif op == "health":
    out = endpoint.health()
elif op == "purge_queue":
    out = endpoint.purge_queue()
else:
    raise SystemExit(f"unknown operation {op}")
print(json.dumps(out))
