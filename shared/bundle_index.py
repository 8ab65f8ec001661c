"""Read a TF checkpoint's ``variables.index`` from its bytes: which data shards it names and how
large each must be. Pure Python, without TensorFlow: a reader proves a version in a bucket
complete from this one small object before it downloads the rest
(``tf.compat.v1.train.NewCheckpointReader`` would need every file on a local disk).

The index is a table in TF's SSTable format (tensorflow/core/lib/io/format.cc, block.cc,
table_builder.cc): a 48-byte footer (two varint BlockHandles padded to 40 bytes, then the magic
0xdb4775248b80fb57, little-endian); the footer's index handle points at the index block, whose
values are the handles of the data blocks. Each block is prefix-compressed entries (varint
shared, non-shared and value lengths, the key's new bytes, the value), then a uint32 restart
array and its count, then a 5-byte trailer (compression type, masked crc32c). TF's BundleWriter
writes the index uncompressed (tensorflow/core/util/tensor_bundle/tensor_bundle.cc:
``options.compression = table::kNoCompression``).

Keys are tensor names; the empty key holds the BundleHeaderProto (``num_shards`` = field 1).
Every other value is a BundleEntryProto (tensorflow/core/protobuf/tensor_bundle.proto):
``shard_id`` = 3, ``offset`` = 4, ``size`` = 5; an entry with ``slices`` (7) is a partitioned
tensor whose own fields are ignored (its slices have entries of their own).
"""

from __future__ import annotations

import struct

MAGIC = 0xDB4775248B80FB57
MAX_SHARDS = 100_000  # DataFilename's %05d; a header counting more is not believed
MAX_KEY = 64 << 10  # bytes of one tensor name: a longer key is not a checkpoint's
FOOTER = 48
TRAILER = 5  # compression type byte + crc32c
NO_COMPRESSION = 0


class BundleIndexError(ValueError):
    """The bytes are not a TF bundle index this reader understands."""


def data_file(shard: int, num_shards: int) -> str:
    """A data shard's file name beside ``variables.index`` (tensor_bundle.cc DataFilename)."""
    return f"variables.data-{shard:05d}-of-{num_shards:05d}"


def required_sizes(index: bytes) -> dict[str, int]:
    """Each data shard's file name -> the least size it must have: the end of the last tensor
    the index puts in it. Every shard the header counts is named, an empty one with 0.
    Raises BundleIndexError on bytes that do not parse, and on a header counting more than
    ``MAX_SHARDS`` shards (a dict of that many names is the spending a hostile index asks for).
    Keys are not built, only their lengths tracked: the work is linear in the index's size."""
    num_shards, ends = 1, {}
    for key_length, value in _walk(index):
        fields = _fields(value)
        if key_length == 0:
            num_shards = max(1, fields.get(1, 1))
            if num_shards > MAX_SHARDS:
                raise BundleIndexError(f"its header counts {num_shards} shards, more than "
                                       f"{MAX_SHARDS}")
            continue
        if 7 in fields:  # a partitioned tensor: its slices are entries of their own
            continue
        shard, end = fields.get(3, 0), fields.get(4, 0) + fields.get(5, 0)
        ends[shard] = max(ends.get(shard, 0), end)
    if any(shard < 0 or shard >= num_shards for shard in ends):
        raise BundleIndexError(f"an entry names shard {max(ends)} of {num_shards}")
    return {data_file(s, num_shards): ends.get(s, 0) for s in range(num_shards)}


def entries(index: bytes) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the table, in order (for inspection: ``required_sizes`` does not
    build the keys)."""
    return list(_walk(index, keys=True))


def _walk(index: bytes, keys: bool = False):
    """(key length, or the key with ``keys``; value) of every entry. The data blocks the index
    block names must follow one another without overlap, so no byte is parsed twice: a hostile
    index cannot make one block be read a million times."""
    if len(index) < FOOTER or struct.unpack_from("<Q", index, len(index) - 8)[0] != MAGIC:
        raise BundleIndexError("not an SSTable (no magic number at the end)")
    footer = memoryview(index)[len(index) - FOOTER:]
    _, pos = _handle(footer, 0)  # the metaindex: TF writes it empty
    (offset, size), _ = _handle(footer, pos)
    next_free = 0
    for _, handle in _block(index, offset, size, True):
        (block_offset, block_size), _ = _handle(memoryview(handle), 0)
        if block_offset < next_free or block_offset + block_size > offset:
            raise BundleIndexError(f"a data block at {block_offset}+{block_size} overlaps "
                                   "another or the index block")
        next_free = block_offset + block_size + TRAILER
        yield from _block(index, block_offset, block_size, keys)


def _handle(data: memoryview, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(data, pos)
    size, pos = _varint(data, pos)
    return (offset, size), pos


def _block(index: bytes, offset: int, size: int, keys: bool):
    """The entries of one block: (key, value) with ``keys``, else (key length, value)."""
    if offset < 0 or size < 4 or offset + size + TRAILER > len(index) - FOOTER:
        raise BundleIndexError(f"a block at {offset}+{size} lies outside the file")
    if index[offset + size] != NO_COMPRESSION:
        raise BundleIndexError(f"a block is compressed (type {index[offset + size]})")
    block = memoryview(index)[offset:offset + size]
    restarts = struct.unpack_from("<I", block, size - 4)[0]
    limit = size - 4 - 4 * restarts
    if limit < 0:
        raise BundleIndexError("a block's restart array is larger than the block")
    pos, key, key_length = 0, b"", 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        fresh, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > key_length or pos + fresh + length > limit:
            raise BundleIndexError("an entry runs past its block")
        key_length = shared + fresh
        if key_length > MAX_KEY:
            raise BundleIndexError(f"a key of {key_length} bytes, more than {MAX_KEY}")
        if keys:
            key = key[:shared] + bytes(block[pos:pos + fresh])
        pos += fresh
        yield (key if keys else key_length), bytes(block[pos:pos + length])
        pos += length


def _varint(data, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise BundleIndexError("a varint runs past its bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(message: bytes) -> dict[int, int]:
    """A protobuf message's varint fields by number (the last one wins, as protobuf reads a
    repeated scalar); other wire types are skipped, their presence recorded as 0."""
    fields, pos = {}, 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            fields[number], pos = _varint(message, pos)
        elif wire == 1:
            fields[number], pos = 0, pos + 8
        elif wire == 2:
            length, pos = _varint(message, pos)
            fields[number], pos = 0, pos + length
        elif wire == 5:
            fields[number], pos = 0, pos + 4
        else:
            raise BundleIndexError(f"wire type {wire} in an entry")
        if pos > len(message):
            raise BundleIndexError("an entry's field runs past it")
    return fields
