"""An unknown key is named with the keys allowed where it was written, wherever the part is
validated: the whole file, a middleware's options, a backend from the admin API."""

from __future__ import annotations

import pytest

from dicomlb.config import ConfigError, build_backend, build_snapshot


def test_an_unknown_backend_key_from_the_api_lists_the_backend_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        build_backend({"name": "a", "dicom": "A@10.0.0.1:104", "wieght": 2})
    assert str(caught.value) == (
        '<api>: backend.wieght: unknown key "wieght"; did you mean "weight"? allowed keys: '
        "name, dicom, http, weight, max_associations, max_pdu, tls, store_via, stow_path, "
        "stow_batch, auth"
    )


def test_an_unknown_middleware_option_lists_the_middleware_options() -> None:
    data = {
        "pools": {"web": {"backends": [{"name": "a", "http": "http://10.0.0.1:8042"}]}},
        "middlewares": {"m": {"strip_prefix": {"prefixes": ["/a"], "prefix": "/b"}}},
    }
    with pytest.raises(ConfigError) as caught:
        build_snapshot(data)
    assert str(caught.value) == (
        '<config>: middlewares.m.strip_prefix.prefix: unknown key "prefix"; did you mean '
        '"prefixes"? allowed keys: prefixes'
    )
