"""Test client: operations of the real ``runpod`` client against lbproxy.

``sdk_client.py OPERATION ARGS_JSON`` runs one operation and prints its JSON result on the last line;
RUNPOD_ENDPOINT_BASE_URL points the SDK at lbproxy (read at import), as a user would set it.
``sdk_client.py --serve`` answers one JSON line per request line ({"op", "args", "base"}), setting
``runpod.endpoint_url_base`` (the SDK's other documented way) for each: the tests pay for importing the SDK once.
"""

import json
import sys
import time
import traceback

import runpod


def operate(op, args):
    runpod.api_key = args["key"]
    endpoint = runpod.Endpoint(args["endpoint"])
    if op == "run_sync":
        return {"output": endpoint.run_sync(args["input"], timeout=args.get("timeout", 60))}
    if op == "run_status":
        job = endpoint.run(args["input"])
        first = job.status()
        output = job.output(timeout=args.get("timeout", 60))
        return {"id": job.job_id, "first": first, "output": output, "final": job.status()}
    if op == "stream":
        job = endpoint.run(args["input"])
        return {"chunks": list(job.stream()), "final": job.status(), "output": job.output(timeout=30)}
    if op == "cancel":
        job = endpoint.run(args["input"])
        deadline = time.time() + 30
        while job.status() != "IN_PROGRESS" and time.time() < deadline:
            time.sleep(0.05)
        answer = job.cancel()
        return {"id": job.job_id, "answer": answer, "final": job.status()}
    if op == "health":
        return endpoint.health()
    if op == "purge_queue":
        return endpoint.purge_queue()
    raise ValueError(f"unknown operation {op}")


if sys.argv[1] == "--serve":
    for line in sys.stdin:
        request = json.loads(line)
        runpod.endpoint_url_base = request["base"]
        try:
            answer = {"ok": operate(request["op"], request["args"])}
        except Exception:  # reported to the test, which fails with it
            answer = {"error": traceback.format_exc()}
        print(json.dumps(answer), flush=True)
else:
    print(json.dumps(operate(sys.argv[1], json.loads(sys.argv[2]))))
