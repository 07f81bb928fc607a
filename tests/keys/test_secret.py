"""Key strings: made at random, recognised by shape, checked against a stored hash."""

from __future__ import annotations

from server.keys.secret import HASH_SHAPE, key_hash, key_id, new_key, public_prefix, verify


def test_a_new_key_is_random_and_only_its_hash_is_kept() -> None:
    one, two = new_key(), new_key()
    assert one.text != two.text and one.id != two.id
    assert one.text.startswith(f"slk_{one.id}_") and len(one.text) > 50
    assert HASH_SHAPE.fullmatch(one.hash) and one.hash == key_hash(one.text)
    assert one.text not in one.hash
    assert public_prefix(one.id) == f"slk_{one.id}"


def test_ids_are_read_only_from_keys_of_the_right_shape() -> None:
    key = new_key()
    assert key_id(key.text) == key.id
    for other in ("", "slk_", "sk-proj-abc", f"slk_{key.id}_short", f"slk_{key.id.upper()}_"
                  + "x" * 40, "Bearer " + key.text, key.text + " "):
        assert key_id(other) is None, other


def test_verify_compares_hashes() -> None:
    key = new_key()
    assert verify(key.text, key.hash)
    assert not verify(key.text[:-1] + ("A" if key.text[-1] != "A" else "B"), key.hash)
    assert not verify("", key.hash)
