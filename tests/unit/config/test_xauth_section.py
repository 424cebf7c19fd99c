"""[xauth] and the RADIUS secret."""

from __future__ import annotations

import pytest

from ikev1d.config import ConfigError, parse_config
from ikev1d.config.model import SecretType, XauthConfig

SECRET = """
[secrets.radius]
type = "radius"
secret = "radius shared secret"
"""


def test_defaults_without_the_section() -> None:
    assert parse_config("").xauth == XauthConfig()


def test_radius_server_with_its_secret() -> None:
    config = parse_config('[xauth]\nradius = "127.0.0.1:1812"\nradius_timeout = "2s"\n'
                          'radius_tries = 4\n' + SECRET)
    assert config.xauth == XauthConfig("127.0.0.1:1812", 2.0, 4)
    assert config.secrets["radius"].type is SecretType.RADIUS
    assert config.secrets["radius"].ids == ()
    v6 = parse_config('[xauth]\nradius = "[::1]:1812"\n' + SECRET)
    assert v6.xauth.radius == "[::1]:1812"


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('[xauth]\nradius = "127.0.0.1:1812"\n', "xauth.radius", 'type = "radius"'),
    ('[xauth]\nradius = "radius.example.org:1812"\n' + SECRET, "xauth.radius", "not an IP"),
    ('[xauth]\nradius = "127.0.0.1"\n' + SECRET, "xauth.radius", "ADDRESS:PORT"),
    ('[xauth]\nradius_tries = 0\n', "xauth.radius_tries", "out of range"),
    ('[xauth]\nradius_timeout = "0s"\n', "xauth.radius_timeout", "longer than"),
    ('[xauth]\nserver = "x"\n', "xauth", "server"),
    ('[secrets.r]\ntype = "radius"\nsecret = "s"\nids = ["%any"]\n', "secrets.r.ids",
     "not for peers"),
])
def test_refusals(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        parse_config(text)
    assert key in str(info.value)
