"""The keyring plugin and credstore's keyring helpers, with real keyring backends."""

from __future__ import annotations

import logging

import keyring
import keyring.backends.fail
import pytest
from credentials_support import DictKeyring, all_log_text, make_cred_env

from cib_core import Credentials, credstore
from cib_core.errors import ConfigurationError
from cib_plugins import keyring_store

SECRET = "keyring-secret-value"


@pytest.fixture
def cred_env(tmp_path, monkeypatch):
    yield from make_cred_env(tmp_path, monkeypatch)


def ask(registry: str) -> Credentials | None:
    return keyring_store.cib_credentials(registry=registry, repository="team/app")


def test_stored_credentials_are_found_under_the_cib_service(cred_env, caplog):
    caplog.set_level(logging.DEBUG)
    assert ask("127.0.0.1:5000") is None
    credstore.set_keyring_credentials("127.0.0.1:5000", "alice", SECRET)

    assert cred_env.keyring.items[("cib:127.0.0.1:5000", "alice")] == SECRET
    assert credstore.keyring_service("[::1]:5000") == "cib:[::1]:5000"
    assert ask("127.0.0.1:5000") == Credentials(username="alice", secret=SECRET)
    assert ask("127.0.0.1:5001") is None
    assert SECRET not in all_log_text(caplog.records)


def test_backend_without_username_lookup_uses_the_username_entry(cred_env):
    backend = DictKeyring(username_lookup=False)
    keyring.set_keyring(backend)
    credstore.set_keyring_credentials("quay.io", "bob", SECRET)
    assert backend.get_credential("cib:quay.io", None) is None
    assert ask("quay.io") == Credentials(username="bob", secret=SECRET)
    assert credstore.delete_keyring_credentials("quay.io") is True
    assert backend.items == {}


def test_delete(cred_env):
    credstore.set_keyring_credentials("quay.io", "bob", SECRET)
    credstore.set_keyring_credentials("ghcr.io", "carol", "other")
    assert credstore.delete_keyring_credentials("quay.io") is True
    assert ask("quay.io") is None
    assert ask("ghcr.io") == Credentials(username="carol", secret="other")
    assert credstore.delete_keyring_credentials("quay.io") is False


def test_no_backend_is_none_with_a_debug_log(cred_env, caplog):
    keyring.set_keyring(keyring.backends.fail.Keyring())
    caplog.set_level(logging.DEBUG, logger="cib_core.authn.credstore")
    assert ask("quay.io") is None
    records = [r for r in caplog.records if "keyring" in r.getMessage()]
    assert records and all(r.levelno == logging.DEBUG for r in records)
    with pytest.raises(ConfigurationError, match="cannot store credentials for quay.io"):
        credstore.set_keyring_credentials("quay.io", "bob", SECRET)
    with pytest.raises(ConfigurationError, match="quay.io"):
        credstore.delete_keyring_credentials("quay.io")


class BrokenKeyring(DictKeyring):
    def get_credential(self, service, username):  # type: ignore[no-untyped-def]
        raise OSError("dbus went away")


def test_a_broken_backend_does_not_break_resolution(cred_env):
    keyring.set_keyring(BrokenKeyring())
    assert ask("quay.io") is None
