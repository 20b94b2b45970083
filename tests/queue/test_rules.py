"""The queue's pure rules: submissions, worker results, Runpod's answers, the SDK environment, time rules."""

from __future__ import annotations

import json

import pytest

from lbproxy.queue.answers import JobCounts, WorkerCounts, health_body, status_body, stream_body
from lbproxy.queue.jobs import Job, JobState, after_worker_lost, deadline, delay_ms, execution_ms
from lbproxy.queue.results import Outcome, read_chunk, read_result
from lbproxy.queue.sdk_env import worker_env
from lbproxy.queue.submissions import BadSubmission, Defaults, parse_submission, runsync_wait

DEFAULTS = Defaults(ttl=86400.0, execution_timeout=600.0)


def submit(body: object, sync: bool = False):
    return parse_submission(json.dumps(body).encode(), "id1", DEFAULTS, sync)


def test_a_submission_keeps_what_the_worker_sees_and_takes_the_endpoint_defaults():
    job = submit({"input": {"p": 1}})
    assert json.loads(job.payload) == {"input": {"p": 1}}
    assert (job.ttl, job.execution_timeout, job.low_priority, job.webhook) == (86400.0, 600.0, False, None)


def test_policy_overrides_are_milliseconds_within_runpods_bounds():
    s3 = {"accessId": "a", "accessSecret": "b", "bucketName": "c", "endpointUrl": "u"}
    job = submit({"input": 1, "webhook": "http://127.0.0.1:9/h", "s3Config": s3,
                  "policy": {"executionTimeout": 5000, "ttl": 10000, "lowPriority": True}}, sync=True)
    assert (job.execution_timeout, job.ttl, job.low_priority, job.sync) == (5.0, 10.0, True, True)
    assert set(json.loads(job.payload)) == {"input", "s3Config", "webhook", "policy"}


@pytest.mark.parametrize("body, field", [
    ({}, "input"),
    ([1], "body"),
    ({"input": 1, "webhook": "ftp://x"}, "webhook"),
    ({"input": 1, "webhook": 3}, "webhook"),
    ({"input": 1, "policy": []}, "policy"),
    ({"input": 1, "policy": {"executionTimeout": 4999}}, "policy.executionTimeout"),
    ({"input": 1, "policy": {"executionTimeout": "5s"}}, "policy.executionTimeout"),
    ({"input": 1, "policy": {"ttl": 9999}}, "policy.ttl"),
    ({"input": 1, "policy": {"ttl": 8 * 86_400_000}}, "policy.ttl"),
    ({"input": 1, "policy": {"lowPriority": "yes"}}, "policy.lowPriority"),
    ({"input": 1, "policy": {"priority": 1}}, "policy.priority"),
    ({"input": 1, "s3Config": "x"}, "s3Config"),
])
def test_bad_submissions_name_the_field(body, field):
    with pytest.raises(BadSubmission, match=field.replace(".", r"\.")):
        submit(body)


def test_a_body_that_is_not_json_is_refused():
    with pytest.raises(BadSubmission):
        parse_submission(b"input=1", "id", DEFAULTS, False)


def test_runsync_wait_defaults_to_90_seconds_within_1_to_300():
    assert runsync_wait(None) == 90.0 and runsync_wait("1500") == 1.5
    for bad in ("999", "300001", "soon"):
        with pytest.raises(BadSubmission):
            runsync_wait(bad)


@pytest.mark.parametrize("body, outcome, output, error, stop", [
    (b'{"output": {"x": 1}}', Outcome.COMPLETED, '{"x":1}', None, False),
    (b'{"output": null}', Outcome.COMPLETED, "null", None, False),
    (b"{}", Outcome.COMPLETED, None, None, False),
    (b'{"output": {"x": 1}, "error": "handled"}', Outcome.FAILED, '{"x":1}', '"handled"', False),
    (b'{"error": "{\\"error_type\\": \\"E\\"}"}', Outcome.FAILED, None, '"{\\"error_type\\": \\"E\\"}"', False),
    (b'{"status": "IN_PROGRESS", "output": {"pct": 5}}', Outcome.PROGRESS, '{"pct":5}', None, False),
    (b'{"output": 1, "stopPod": true}', Outcome.COMPLETED, "1", None, True),
    (b"not json", Outcome.FAILED, None, '"the worker sent a result that is not JSON"', False),
])
def test_worker_results_read_into_outcomes(body, outcome, output, error, stop):
    r = read_result(body)
    assert (r.outcome, r.output, r.error, r.stop_worker) == (outcome, output, error, stop)


def test_stream_chunks_are_the_output_of_each_post():
    assert read_chunk(b'{"output": {"chunk": 0}}') == '{"chunk":0}'
    assert read_chunk(b'{"nope": 1}') is None and read_chunk(b"[") is None


def job(**kw) -> Job:
    base = dict(id="j", state=JobState.IN_QUEUE, payload="{}", webhook=None, low_priority=False, sync=False,
                created_at=100.0, expires_at=200.0, execution_timeout=None)
    return Job(**{**base, **kw})


def test_delay_and_execution_times_in_milliseconds():
    queued = job()
    assert delay_ms(queued, 101.5) == 1500 and execution_ms(queued, 101.5) == 0
    running = job(state=JobState.IN_PROGRESS, started_at=102.0)
    assert delay_ms(running, 110) == 2000 and execution_ms(running, 110) == 8000
    done = job(state=JobState.COMPLETED, started_at=102.0, finished_at=103.25)
    assert execution_ms(done, 500) == 1250
    assert deadline(10.0, 5.0) == 15.0 and deadline(10.0, None) is None


def test_a_lost_job_is_requeued_until_max_attempts():
    assert after_worker_lost(1, 3) is JobState.IN_QUEUE
    assert after_worker_lost(2, 3) is JobState.IN_QUEUE
    assert after_worker_lost(3, 3) is JobState.FAILED


def test_status_body_has_runpods_fields():
    done = job(state=JobState.COMPLETED, started_at=101.0, finished_at=102.0, output='{"a":1}', worker_id="w",
               retries=1)
    assert status_body(done, 999) == {"id": "j", "status": "COMPLETED", "delayTime": 1000, "executionTime": 1000,
                                      "output": {"a": 1}, "workerId": "w", "retries": 1}
    assert status_body(job(), 100.25) == {"id": "j", "status": "IN_QUEUE", "delayTime": 250}
    failed = job(state=JobState.FAILED, error='"boom"', started_at=100.0, finished_at=100.0)
    assert status_body(failed, 0)["error"] == "boom"


def test_stream_and_health_bodies():
    assert stream_body(JobState.IN_PROGRESS, ["1", '{"t":"a"}']) == {
        "status": "IN_PROGRESS", "stream": [{"output": 1}, {"output": {"t": "a"}}]}
    body = health_body(JobCounts(in_queue=2, in_progress=1, completed=5, failed=1, retried=1),
                       WorkerCounts(idle=1, running=1))
    assert body["jobs"] == {"completed": 5, "failed": 1, "inProgress": 1, "inQueue": 2, "retried": 1}
    assert body["workers"]["idle"] == 1 and body["workers"]["running"] == 1


def test_the_sdk_environment_writes_the_worker_id_into_every_url_and_a_question_mark_into_each():
    env = worker_env("http://127.0.0.1:5000", "ep", "ep-1-ab", "s3cret", 2.4, {"RUNPOD_LOG_LEVEL": "INFO"})
    assert env["RUNPOD_WEBHOOK_GET_JOB"] == "http://127.0.0.1:5000/v2/ep/job-take/ep-1-ab?"
    assert env["RUNPOD_WEBHOOK_POST_OUTPUT"] == "http://127.0.0.1:5000/v2/ep/job-done/ep-1-ab/$ID?"
    assert env["RUNPOD_WEBHOOK_POST_STREAM"] == "http://127.0.0.1:5000/v2/ep/job-stream/ep-1-ab/$ID?"
    assert env["RUNPOD_WEBHOOK_PING"] == "http://127.0.0.1:5000/v2/ep/ping/ep-1-ab"
    assert (env["RUNPOD_POD_ID"], env["RUNPOD_AI_API_KEY"], env["RUNPOD_ENDPOINT_ID"]) == ("ep-1-ab", "s3cret", "ep")
    assert env["RUNPOD_PING_INTERVAL"] == "2000"  # a multiple of 1000: the SDK divides by 1000
    assert env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == "true" and env["RUNPOD_LOG_LEVEL"] == "INFO"


def test_worker_env_may_turn_the_fitness_checks_on_but_never_change_the_urls_or_secret():
    env = worker_env("http://h:1", "ep", "w", "k", 1, {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "false",
                                                      "RUNPOD_AI_API_KEY": "other", "RUNPOD_POD_ID": "x"})
    assert env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == "false"
    assert (env["RUNPOD_AI_API_KEY"], env["RUNPOD_POD_ID"]) == ("k", "w")
