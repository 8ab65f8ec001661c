"""TF Serving's small config files that the tensorflow-serving-api package ships no classes for
(``SSLConfig``, ``MonitoringConfig``): their messages built from a description, in a descriptor
pool of their own (so they never clash with another copy), and read as text protos with a size
bound and a one-line error for the operator."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

_FIELD = descriptor_pb2.FieldDescriptorProto
TYPES = {"string": _FIELD.TYPE_STRING, "bool": _FIELD.TYPE_BOOL}


def message_class(proto_file: str, package: str, messages: dict[str, list[tuple]]):
    """The class of the last of ``messages`` (name -> its fields, each ``(name, number,
    type)``: a type from ``TYPES``, or the name of an earlier message)."""
    file = descriptor_pb2.FileDescriptorProto(name=proto_file, package=package, syntax="proto3")
    for name, fields in messages.items():
        message = file.message_type.add(name=name)
        for field, number, kind in fields:
            if kind in TYPES:
                message.field.add(name=field, number=number, type=TYPES[kind],
                                  label=_FIELD.LABEL_OPTIONAL)
            else:
                message.field.add(name=field, number=number, type=_FIELD.TYPE_MESSAGE,
                                  type_name=f".{package}.{kind}", label=_FIELD.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))


def read(path: Path, cls, where: str, what: str, error: type[Exception], max_bytes: int):
    """``path``'s text proto as a ``cls``; ``error`` with one line (``where: ...``) if it
    cannot be read, is over ``max_bytes`` or is not ``what`` (e.g. "an SSLConfig")."""
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as err:
        raise error(f"{where}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise error(f"{where}: over {max_bytes} bytes, not {what}")
    config = cls()
    try:
        text_format.Parse(data.decode("utf-8"), config)
    except (UnicodeDecodeError, text_format.ParseError) as err:
        raise error(f"{where}: not {what} text proto: {' '.join(str(err).split())}") from None
    return config
