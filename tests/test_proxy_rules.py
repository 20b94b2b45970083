"""The request path's rules as pure functions (lbproxy.proxy.rules): what is admitted, in which order, and what a
worker's failure before any response means for the request."""

from __future__ import annotations

import pytest

from lbproxy.config import parse_config
from lbproxy.proxy import errors, framing
from lbproxy.proxy.rules import RESEND_WINDOW, AfterFailure, admit, after_failure
from lbproxy.proxy.settings import ProxySettings


def settings(**data) -> ProxySettings:
    return ProxySettings.from_config(parse_config({"name": "r", "worker": {"command": ["w"]}, **data}, environ={}))


def info(*headers: tuple[bytes, bytes]) -> framing.RequestInfo:
    return framing.scan_request(list(headers), drop_authorization=False)


KEYED = settings(auth={"api_keys": ["k-0123456789"]}, limits={"max_body_size": 10})


def test_a_plain_request_is_admitted():
    assert admit(b"GET", b"/x", info(), settings()) is None


def test_auth_comes_first_even_for_a_bad_target_or_body():
    r = admit(b"POST", b"http://evil/", info((b"Content-Length", b"999")), KEYED)
    assert r is not None and r.error is errors.UNAUTHORIZED and r.headers == ((b"WWW-Authenticate", b"Bearer"),)


@pytest.mark.parametrize(("value", "ok"), [(b"Bearer k-0123456789", True), (b"bearer k-0123456789", True),
                                          (b"Bearer k-0123456789x", False), (b"k-0123456789", False)])
def test_only_a_bearer_key_passes(value, ok):
    r = admit(b"GET", b"/", info((b"Authorization", value)), KEYED)
    assert (r is None) is ok


def test_the_rest_in_order_target_framing_length_expect():
    key = (b"Authorization", b"Bearer k-0123456789")
    assert admit(b"GET", b"*", info(key), KEYED).error is errors.BAD_TARGET
    te = admit(b"POST", b"/", info(key, (b"Transfer-Encoding", b"gzip")), KEYED)
    assert te.error is errors.MALFORMED and te.close
    big = admit(b"POST", b"/", info(key, (b"Content-Length", b"11")), KEYED)
    assert big.error is errors.BODY_TOO_LARGE and big.close and big.details == {"limit": 10}
    assert admit(b"POST", b"/", info(key, (b"Content-Length", b"10")), KEYED) is None
    assert admit(b"GET", b"/", info(key, (b"Expect", b"200-ok")), KEYED).error is errors.EXPECTATION_FAILED
    assert admit(b"GET", b"/", info(key, (b"Expect", b"100-continue")), KEYED) is None


def test_a_refused_connection_sends_the_request_elsewhere_whatever_its_method():
    for method in (b"GET", b"POST"):
        assert after_failure(connected=False, reused=False, method=method, sent_whole=True, since_sent=0,
                             resent=False) is AfterFailure.ELSEWHERE
    assert after_failure(connected=False, reused=False, method=b"GET", sent_whole=True, since_sent=0,
                         resent=True) is AfterFailure.ELSEWHERE  # the second attempt found the worker gone


@pytest.mark.parametrize(("reused", "method", "whole", "since", "resent", "outcome"), [
    (True, b"GET", True, 0.1, False, AfterFailure.AGAIN),  # the idle-close race
    (True, b"PUT", True, RESEND_WINDOW, False, AfterFailure.AGAIN),
    (True, b"GET", True, RESEND_WINDOW + 0.01, False, AfterFailure.GIVE_UP),  # the worker may have acted on it
    (True, b"POST", True, 0.1, False, AfterFailure.GIVE_UP),  # not idempotent
    (True, b"GET", False, 0.1, False, AfterFailure.GIVE_UP),  # not sent whole (a body was streaming)
    (False, b"GET", True, 0.1, False, AfterFailure.GIVE_UP),  # a new connection: not the race
    (True, b"GET", True, 0.1, True, AfterFailure.GIVE_UP),  # once only
])
def test_a_connected_failure_is_sent_again_only_for_the_idle_close_race(reused, method, whole, since, resent,
                                                                         outcome):
    assert after_failure(connected=True, reused=reused, method=method, sent_whole=whole, since_sent=since,
                         resent=resent) is outcome


def test_errors_render_once_to_json_with_the_request_id():
    raw = errors.response(errors.NO_WORKER, http10=False, close=True, headers=((b"X-Request-Id", b"r1"),),
                          detail="no worker")
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable") and b"X-Request-Id: r1" in head
    assert b"Connection: close" in head and body == b'{"error": "no_worker", "message": "no worker; retry later"}'
    assert errors.body(errors.UNAUTHORIZED) is errors.body(errors.UNAUTHORIZED)  # the same bytes, rendered once
    assert errors.response(errors.UNAUTHORIZED, http10=False, close=False, head_request=True).endswith(b"\r\n\r\n")
