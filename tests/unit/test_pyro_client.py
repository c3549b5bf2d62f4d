"""labnodes.pyro_client's PlainJson: the same bytes and the same decoded values as Pyro4's json serializer, and
Pyro4's own path (which recreates marked dicts) whenever the text could hold a `__class__` mark."""

import json
import time

from hypothesis import given
from hypothesis import strategies as st
from Pyro4.util import JsonSerializer

from labnodes import pyro_client, ring_lap

PlainJson = pyro_client.plain_json_class()
plain, pyro4 = PlainJson(), JsonSerializer()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def ring_message():
    msg = ring_lap.new_message("hello ring", [89, 55], "pyro1")
    return ring_lap.receive(msg, "pyro2", "pyro2", "10.77.83.22:40000", time.time())


def both_decode(data: bytes):
    return plain.loadsCall(data), pyro4.loadsCall(data)


def test_pyro_uses_plain_json_for_json_by_name_and_by_id():
    Pyro4 = pyro_client.pyro()
    by_name = Pyro4.util.get_serializer("json")
    assert type(by_name).__name__ == "PlainJson"
    assert Pyro4.util.get_serializer_by_id(JsonSerializer.serializer_id) is by_name


def test_a_ring_call_is_encoded_to_the_same_bytes_and_decoded_to_the_same_values():
    args = (ring_message(), 4.5)
    data = plain.dumpsCall("labkit.ring.pyro3", "relay", args, {})
    assert data == pyro4.dumpsCall("labkit.ring.pyro3", "relay", args, {})
    mine, theirs = both_decode(data)
    assert mine == theirs == ("labkit.ring.pyro3", "relay", [args[0], 4.5], {})


@given(json_values, json_values)
def test_any_json_data_decodes_as_pyro4_decodes_it(vargs, answer):
    data = pyro4.dumpsCall("obj", "method", [vargs], {"k": answer})
    assert plain.dumpsCall("obj", "method", [vargs], {"k": answer}) == data
    mine, theirs = both_decode(data)
    assert mine == theirs
    assert plain.loads(pyro4.dumps(answer)) == pyro4.loads(pyro4.dumps(answer))


def test_a_remote_exception_is_recreated_as_pyro4_recreates_it():
    data = pyro4.dumps(ValueError("ring message must be a dict"))
    assert b"__class__" in data
    got = plain.loads(data)
    assert isinstance(got, ValueError) and str(got) == "ring message must be a dict"


def test_a_class_mark_written_with_escapes_is_still_found():
    # '\u005f_class__' decodes to '__class__' without the mark's plain text in the data: Pyro4's path must run
    data = (
        b'{"object": "o", "method": "m", "params": [{"\\u005f_class__": "builtins.ValueError",'
        b' "__exception__": true, "args": ["boom"], "attributes": {}}], "kwargs": {}}'
    )
    assert b"__class__" not in data
    mine, theirs = both_decode(data)
    assert isinstance(mine[2][0], ValueError) and isinstance(theirs[2][0], ValueError)


def test_a_mark_inside_a_string_takes_pyro4s_path_and_decodes_the_same():
    value = {"text": "a student wrote __class__ here", "n": [1, 2]}
    data = pyro4.dumpsCall("o", "m", [value], {})
    mine, theirs = both_decode(data)
    assert mine == theirs == ("o", "m", [value], {})


def test_encoding_unencodable_data_falls_back_to_pyro4s_default():
    data = plain.dumps({"items": {3, 1, 2}})  # a set: json cannot, Pyro4's default makes a list of it
    assert sorted(json.loads(data)["items"]) == [1, 2, 3]
