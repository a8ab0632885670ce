"""`redact_url`: no password, token or secret query value of a server URL survives into a log line, and
what says where the server is (scheme, user, host, port, path) does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.runtime.live.redact import MASK, redact_url

pytestmark = pytest.mark.unit

_secret = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_.~!$&'()*+,;=%", min_size=6,
                  max_size=30).filter(lambda s: s.isascii() and "%" not in s[-2:])
_user = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@given(scheme=st.sampled_from(["nats", "tls", "redis", "rediss"]), user=_user, secret=_secret,
       port=st.integers(1, 65535))
def test_a_password_never_survives_and_the_server_does(scheme: str, user: str, secret: str, port: int) -> None:
    for url in (f"{scheme}://{user}:{secret}@host.example:{port}/0", f"{scheme}://:{secret}@host.example:{port}/0",
                f"{scheme}://{secret}@host.example:{port}", f"{scheme}://host.example:{port}/0?password={secret}"):
        shown = redact_url(url)
        assert f":{secret}@" not in shown and f"{secret}@" not in shown and f"password={secret}" not in shown
        assert f"host.example:{port}" in shown and shown.startswith(f"{scheme}://") and MASK in shown


@pytest.mark.parametrize(("url", "shown"), [
    ("nats://svc:s3cret@nats:4222", "nats://svc:***@nats:4222"),
    ("nats://T0KEN@nats:4222", "nats://***@nats:4222"),
    ("redis://:pw@r:6379/0", "redis://***@r:6379/0"),
    ("rediss://default:pw@r:6380/1?password=x&db=2", "rediss://default:***@r:6380/1?password=***&db=2"),
    ("unix:///run/redis.sock?password=x", "unix:///run/redis.sock?password=***"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("nats://u:p@host:notaport", MASK),  # unparseable with credentials: masked whole
])
def test_examples(url: str, shown: str) -> None:
    assert redact_url(url) == shown
