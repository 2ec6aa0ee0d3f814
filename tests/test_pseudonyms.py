"""Pseudonyms (stdlib HMAC-SHA256) and the secret they are keyed with."""

from __future__ import annotations

import doctest
import hashlib
import hmac
from pathlib import Path

import polars as pl
import pytest

from pipeline import pseudonyms
from pipeline.errors import ContractError, StageError
from pipeline.pseudonyms import pseudonymise, read_secret

KEY = b"test-secret-not-for-real-use"

# Written by the numpy SHA-256 implementation this module replaced (pipeline/outreach.py at the
# branch point): the pseudonyms of existing lists must not change.
KNOWN_ANSWERS = [
    (KEY, "P000001", "d45edd6226ebc323cec5f39e69e5eb8eff65a9bad5f3be6c2b293e614d907a5b"),
    (KEY, "P199999", "2e1c5ab65493a9d2ca2f93d97c24cc8ece24d5f89273e25360f676ad6170a063"),
    (KEY, "", "b3eaef9bb74c35314824c2dea5ed539aa1579772f3cef5efee882c121284955f"),
    (KEY, "ééé", "778e5383de05e3045879f267b763ddc8bff2527490b892069d60888a9fa416ec"),
    (KEY, "x" * 64, "8fbe0069bc0adee50c9703522844d5af98b4250c4023906320485ad0c77e02a2"),
    (b"k" * 100, "P000001", "59275d76057f422c06b295f314ee7373845e4a4b5e3a26c8c1eaefc1738c5f33"),
    (b"k" * 100, "", "d46761768ee3c864fc76c08b3d73c8092853ae3fefa01b990963dfa2d56e7334"),
    (b"k" * 100, "x" * 64, "bfb3e88dbb051a5dab7551c925ef961993a60b56b18f02bf4cf7b640027679cb"),
]

# RFC 4231 HMAC-SHA-256 test cases with text data (cases 1, 2, 6 and 7; 3-4 are not UTF-8 and 5
# truncates the output).
RFC_4231 = [
    (b"\x0b" * 20, "Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", "what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 131, "Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131,
     "This is a test using a larger than block-size key and a larger than block-size data. "
     "The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "person_id", "want"), KNOWN_ANSWERS + RFC_4231)
def test_known_answers(key: bytes, person_id: str, want: str) -> None:
    assert pseudonymise(pl.Series("person_id", [person_id]), key).item() == want


def test_a_series_keeps_order_length_and_name() -> None:
    ids = ["b", "a", "b", "é" * 40, "z" * 300]
    got = pseudonymise(pl.Series("person_id", ids), KEY)
    assert got.name == "pseudonym" and got.dtype == pl.String
    assert got.to_list() == [hmac.new(KEY, i.encode(), hashlib.sha256).hexdigest() for i in ids]
    assert got[0] == got[2] != got[1]
    assert pseudonymise(pl.Series("person_id", ["a"]), b"another key").item() != got[1]


def test_empty_and_null_ids() -> None:
    assert pseudonymise(pl.Series("person_id", [], dtype=pl.String), KEY).len() == 0
    with pytest.raises(ContractError, match="person_id: 1 null"):
        pseudonymise(pl.Series("person_id", ["a", None]), KEY)


def test_secret_from_env_then_file_else_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".config" / "phm").mkdir(parents=True)
    (tmp_path / ".config" / "phm" / "pseudonym.key").write_text("from-file\n")
    options = {"secret_env": "PHM_TEST_KEY", "secret_file": "~/.config/phm/pseudonym.key"}
    assert read_secret(**options, environ={"PHM_TEST_KEY": " from-env "}) == b"from-env"
    assert read_secret(**options, environ={}) == b"from-file"
    with pytest.raises(StageError, match=r"PHM_TEST_KEY.*make run"):
        read_secret(secret_env="PHM_TEST_KEY", secret_file=str(tmp_path / "nope"), environ={})


def test_docstring_examples() -> None:
    assert doctest.testmod(pseudonyms).failed == 0
