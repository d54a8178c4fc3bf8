"""Generate ``feed_pb2`` and ``feed_pb2_grpc`` from proto/feedline/feed/v1/feed.proto.

``make proto`` runs ``python -m feedline_contracts.feed_v1.generate``, which
writes the modules beside this file; ``generate(folder)`` writes them
elsewhere (the staleness test compares the two). grpcio-tools (protoc and the
gRPC plugin, pinned) writes the code and protoc's ``.pyi`` of the messages;
mypy-protobuf writes the typed ``.pyi`` of the stub and servicer. The
generated modules import each other by the proto's path (``feedline.feed.v1``);
the one import is rewritten to where they live here. Needs the dev extra
(grpcio-tools, mypy-protobuf) and the repository's ``proto/`` folder.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The repository's proto/ folder: contracts/feedline_contracts/feed_v1 -> the repository.
PROTO_ROOT = PACKAGE_DIR.parents[2] / "proto"
PROTO_FILE = "feedline/feed/v1/feed.proto"
MODULES = ("feed_pb2.py", "feed_pb2.pyi", "feed_pb2_grpc.py", "feed_pb2_grpc.pyi")
GENERATED_IMPORT = "from feedline.feed.v1 import feed_pb2"
PACKAGE_IMPORT = "from feedline_contracts.feed_v1 import feed_pb2"


def _mypy_grpc_plugin() -> str:
    beside = Path(sys.executable).with_name("protoc-gen-mypy_grpc")
    found = str(beside) if beside.exists() else shutil.which("protoc-gen-mypy_grpc")
    if found is None:
        raise RuntimeError(
            "protoc-gen-mypy_grpc not found: pip install -e '.[dev]' (mypy-protobuf)"
        )
    return found


def generate(folder: Path = PACKAGE_DIR, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Write the generated modules into ``folder``; returns their paths."""
    from grpc_tools import protoc

    well_known = str(files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory(prefix="feedline-proto-") as scratch:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={proto_root}",
                f"--proto_path={well_known}",
                f"--python_out={scratch}",
                f"--pyi_out={scratch}",
                f"--grpc_python_out={scratch}",
                f"--plugin=protoc-gen-mypy_grpc={_mypy_grpc_plugin()}",
                f"--mypy_grpc_out={scratch}",
                str(proto_root / PROTO_FILE),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {proto_root / PROTO_FILE} (exit {status})")
        written = []
        for name in MODULES:
            text = (Path(scratch) / Path(PROTO_FILE).parent / name).read_text()
            if name.startswith("feed_pb2_grpc") and GENERATED_IMPORT not in text:
                raise RuntimeError(
                    f"{name}: no {GENERATED_IMPORT!r} to rewrite; update generate.py"
                )
            target = folder / name
            target.write_text(text.replace(GENERATED_IMPORT, PACKAGE_IMPORT))
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR):
        print(path)
