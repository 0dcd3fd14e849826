"""Write the `buf.validate` contract (buf/validate/validate.proto) as a FileDescriptorSet.

The contracts in protos/ declare their field rules with protovalidate's `buf.validate` options.
The `protovalidate` package (a dev dependency) ships that contract compiled into its own code, so
`make protos` takes it from the installed package, with the well-known types it imports, and
hands it to protoc with `--descriptor_set_in`: nothing is fetched and no copy of the .proto is
kept in this repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2
from protovalidate._gen.buf.validate import validate_pb


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    for module in (descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    files.file.add().ParseFromString(validate_pb.desc().proto.to_binary())
    return files


def main(out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(descriptor_set().SerializeToString())


if __name__ == "__main__":
    main(sys.argv[1])
