"""An unchanged Runpod serverless handler: the same file runs on Runpod and as an lbproxy queue worker.

lbproxy starts it with the SDK's environment (RUNPOD_WEBHOOK_GET_JOB, RUNPOD_AI_API_KEY, ...), so the SDK
pulls jobs from lbproxy. It needs the `runpod` package in the interpreter that runs it (its own virtualenv:
`python3 -m venv .venv-worker && .venv-worker/bin/pip install runpod==1.12.0`).

Input: {"prompt": "text", "sleep": seconds (optional), "stream": true (optional), "fail": true (optional)}.
"""

import time

import runpod


def handler(job):
    job_input = job["input"]
    if job_input.get("fail"):
        raise ValueError("asked to fail")
    prompt = str(job_input.get("prompt", ""))
    time.sleep(float(job_input.get("sleep", 0)))
    if job_input.get("stream"):
        return stream(prompt)
    runpod.serverless.progress_update(job, {"done": 1.0})
    return {"echo": prompt, "words": len(prompt.split()), "job_id": job["id"]}


def stream(prompt):
    # Returned from a sync handler, a generator is not streamed by the SDK; see tests/queue/workers for
    # generator handlers (the handler itself must be a generator function).
    return {"tokens": prompt.split()}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
