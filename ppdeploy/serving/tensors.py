"""Tensors of the Open Inference Protocol (KServe v2) over HTTP: JSON, and Triton's binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes (the extension ``tritonclient.http`` uses
by default): the ``Inference-Header-Content-Length`` HTTP header gives the JSON part's length, and each input whose
``parameters.binary_data_size`` is set takes that many bytes, in input order, after it. Fixed-size types are raw
little-endian arrays in row-major order; a ``BYTES`` tensor is its elements one after the other, each a 4-byte
little-endian length and then its bytes. Responses use the same layout for the outputs asked for in binary.

Plain numpy and JSON: no HTTP here (:mod:`ppdeploy.serving.v2` holds the endpoints). Malformed data raises
:class:`TensorError` with one line saying what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Open Inference Protocol datatype -> numpy dtype (little-endian on the wire); BYTES elements are bytes objects.
DATATYPES: dict[str, Any] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
HEADER_LENGTH = "Inference-Header-Content-Length"


class TensorError(ValueError):
    """A request's JSON or tensor data is malformed; the message is one line for the client."""


@dataclass
class Tensor:
    """One named tensor: its protocol datatype, shape and data (an object array of ``bytes`` for BYTES)."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return [int(dim) for dim in self.data.shape]


@dataclass
class InferRequest:
    """A parsed ``POST .../infer`` body."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[dict[str, Any]]  # each {"name": ..., "parameters": {...}}
    parameters: dict[str, Any]


# --------------------------------------------------------------------------------------------------- requests


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse an inference request body (JSON, or JSON followed by binary tensor data).

    Args:
        body: the whole HTTP body.
        header_length: the ``Inference-Header-Content-Length`` value; ``None`` when the body is all JSON.

    Raises:
        TensorError: bad JSON, a missing or mistyped field, data that does not fit its shape and datatype, or
            binary data that does not add up to the body.
    """
    if header_length is not None and not 0 < header_length <= len(body):
        raise TensorError(f"{HEADER_LENGTH}: {header_length} does not fit a body of {len(body)} bytes")
    header = _json_object(body[:header_length] if header_length is not None else body)
    raw = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    inputs_json = header.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise TensorError("'inputs' must be a non-empty list of tensors")
    offset = 0
    inputs = []
    for index, spec in enumerate(inputs_json):
        tensor, used = _parse_input(spec, index, raw[offset:])
        inputs.append(tensor)
        offset += used
    if offset != len(raw):
        raise TensorError(f"binary data: the inputs' binary_data_size add up to {offset} bytes, the body holds "
                          f"{len(raw)} after the JSON header")
    return InferRequest(_optional_str(header, "id"), inputs, _requested_outputs(header.get("outputs")),
                        _parameters(header, "request"))


def _json_object(data: bytes | memoryview) -> dict[str, Any]:
    try:
        header = json.loads(bytes(data))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TensorError(f"request JSON is malformed ({exc})") from None
    if not isinstance(header, dict):
        raise TensorError("request JSON must be an object with 'inputs'")
    return header


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise TensorError(f"'{key}' must be a string")
    return value


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise TensorError(f"{where} 'parameters' must be an object")
    return parameters


def _parse_input(spec: Any, index: int, raw: memoryview) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise TensorError(f"inputs[{index}] must be an object with name, shape, datatype and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise TensorError(f"inputs[{index}]: 'name' must be a non-empty string")
    datatype, shape = spec.get("datatype"), spec.get("shape")
    check_spec(name, datatype, shape)
    parameters = _parameters(spec, f"input '{name}'")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise TensorError(f"input '{name}': has both 'data' and binary_data_size")
        if not isinstance(size, int) or size < 0 or size > len(raw):
            raise TensorError(f"input '{name}': binary_data_size {size!r} does not fit the {len(raw)} bytes left "
                              "in the body")
        return Tensor(name, datatype, from_binary(name, datatype, shape, raw[:size]), parameters), size
    if "data" not in spec:
        raise TensorError(f"input '{name}': no 'data' and no binary_data_size")
    return Tensor(name, datatype, _from_json(name, datatype, shape, spec["data"]), parameters), 0


def check_spec(name: str, datatype: Any, shape: Any) -> None:
    """An input's datatype is one of the protocol's and its shape a list of non-negative integers (any transport)."""
    if datatype not in DATATYPES:
        raise TensorError(f"input '{name}': datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise TensorError(f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")


def from_binary(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw bytes (little-endian, row-major; BYTES length-prefixed), checked against its shape."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _array_of_bytes(deserialize_bytes(raw, name), count, shape, name)
    dtype = DATATYPES[datatype]
    if count * dtype.itemsize != len(raw):
        raise TensorError(f"input '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                          f"binary_data_size is {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def from_values(name: str, datatype: str, shape: list[int], values: Any) -> np.ndarray:
    """A tensor from already typed values (gRPC's ``*_contents``: numbers, or bytes for BYTES), checked against its
    shape."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _array_of_bytes(list(values), count, shape, name)
    if len(values) != count:
        raise TensorError(f"input '{name}': shape {shape} holds {count} elements, the data has {len(values)}")
    try:
        return np.asarray(values, dtype=DATATYPES[datatype]).reshape(shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TensorError(f"input '{name}': the data does not fit {datatype} ({exc})") from None


def _from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    flat = _flatten(data)
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in flat):
            raise TensorError(f"input '{name}': BYTES data in JSON must be strings (send binary data, such as "
                              "encoded images, with the binary tensor data extension)")
        return from_values(name, datatype, shape, [item.encode() for item in flat])
    if any(isinstance(item, (str, dict, list)) or item is None for item in flat):
        raise TensorError(f"input '{name}': 'data' of a {datatype} tensor must hold numbers")
    return from_values(name, datatype, shape, flat)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _array_of_bytes(items: list[bytes], count: int, shape: list[int], name: str) -> np.ndarray:
    if len(items) != count:
        raise TensorError(f"input '{name}': shape {shape} holds {count} elements, the data has {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _requested_outputs(outputs: Any) -> list[dict[str, Any]]:
    if outputs is None:
        return []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise TensorError("'outputs' must be a list of objects with a 'name'")
    return [{"name": o["name"], "parameters": _parameters(o, f"output '{o['name']}'")} for o in outputs]


# ---------------------------------------------------------------------------------------------- BYTES elements


def serialize_bytes(items: Any) -> bytes:
    """BYTES elements (bytes or str) as the binary extension lays them out: 4-byte LE length, then the bytes."""
    parts = []
    for item in np.asarray(items, dtype=object).reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview, name: str = "tensor") -> list[bytes]:
    """The elements of a binary BYTES tensor."""
    raw = memoryview(raw)
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise TensorError(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise TensorError(f"input '{name}': a BYTES element of {length} bytes runs past its binary_data_size")
        items.append(bytes(raw[offset:offset + length]))
        offset += length
    return items


# -------------------------------------------------------------------------------------------------- responses


def encode_tensors(header: dict[str, Any], key: str, tensors: list[Tensor],
                   binary: set[str]) -> tuple[bytes, int | None]:
    """A body holding ``header`` plus ``tensors`` under ``header[key]``: JSON data, or binary data for the names
    in ``binary`` (then the JSON length to send as ``Inference-Header-Content-Length``, else ``None``)."""
    entries, chunks = [], []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        parameters = dict(tensor.parameters)
        if tensor.name in binary:
            chunk = to_binary(tensor)
            parameters["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        else:
            entry["data"] = _to_json(tensor)
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)
    text = json.dumps({**header, key: entries}, separators=(",", ":")).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def to_binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=DATATYPES[tensor.datatype]).tobytes()


def _to_json(tensor: Tensor) -> list[Any]:
    flat = np.asarray(tensor.data).reshape(-1)
    if tensor.datatype == "BYTES":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in flat]
    return flat.tolist()


def decode_tensors(body: bytes, header_length: int | None, key: str = "outputs") -> tuple[dict[str, Any],
                                                                                         dict[str, np.ndarray]]:
    """The reverse of :func:`encode_tensors` (for clients: the load test): the JSON header and each tensor by
    name."""
    header = _json_object(body[:header_length] if header_length is not None else body)
    raw = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    tensors, offset = {}, 0
    for spec in header.get(key) or []:
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is None:
            tensors[spec["name"]] = _from_json(spec["name"], spec["datatype"], spec["shape"], spec["data"])
        else:
            chunk = raw[offset:offset + size]
            tensors[spec["name"]] = from_binary(spec["name"], spec["datatype"], spec["shape"], chunk)
            offset += size
    return header, tensors
