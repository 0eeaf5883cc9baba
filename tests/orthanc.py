"""A real Orthanc PACS for the tests: configuration in a temp folder, loopback, free ports.

Configured as Orthanc's own integration tests configure it (`StableAge` 1, `OverwriteInstances`
true, the peer in `DicomModalities`, a `DicomWeb.Servers` entry), with the DICOMweb plugin found
through `dpkg -L orthanc-dicomweb`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.ports import steady_port

AE_TITLE = "ORTHANC"
PEER = "covidxray"  # our node's name in Orthanc's DicomModalities
PEER_AE = "COVIDXRAY"


def orthanc_binary() -> str | None:
    """Orthanc's executable, if Debian's package is installed."""
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared object, as `dpkg -L orthanc-dicomweb` lists it."""
    try:
        listed = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    plugins = [p for p in listed if "DicomWeb" in Path(p).name and ".so" in p and Path(p).is_file()]
    return plugins[0] if plugins else None


@dataclass
class Orthanc:
    """A running Orthanc: its REST and DICOMweb URLs, its DICOM port, and our node's reserved port."""

    http_port: int
    dicom_port: int
    peer_port: int  # the port our listener uses when Orthanc sends to it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str) -> Any:
        """GET a REST resource as JSON."""
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: bytes | dict[str, Any] | str, timeout: float = 60) -> Any:
        """POST to a REST resource; the answer as JSON."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def clear(self) -> None:
        """Delete every patient (between tests)."""
        for patient in self.get("/patients"):
            request = urllib.request.Request(f"{self.url}/patients/{patient}", method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()


def configuration(folder: Path, orthanc: Orthanc, plugin: str, storage: Path) -> dict[str, Any]:
    """Orthanc's JSON configuration (`storage`: its index and files)."""
    return {
        "Name": "covidxray-test-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": orthanc.http_port,
        "DicomPort": orthanc.dicom_port,
        "DicomAet": AE_TITLE,
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": False,
        "HttpsVerifyPeers": False,
        "StableAge": 1,
        "OverwriteInstances": True,
        "DicomCheckCalledAet": False,
        "DicomScuTimeout": 10,
        "DicomModalities": {PEER: [PEER_AE, "127.0.0.1", orthanc.peer_port]},
        "Plugins": [plugin],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "StudiesMetadata": "Full",
            "Servers": {"self": [f"http://127.0.0.1:{orthanc.http_port}/dicom-web/"]},
        },
    }


@contextmanager
def running_orthanc(folder: Path, binary: str, plugin: str, **extra: Any) -> Iterator[Orthanc]:
    """Start Orthanc on free loopback ports (`extra`: more configuration); yield once its REST API
    answers; stop it."""
    orthanc = Orthanc(http_port=steady_port(), dicom_port=steady_port(), peer_port=steady_port())
    config = folder / "orthanc.json"
    memory = Path("/dev/shm")  # the index's fsyncs cost nothing there
    storage = Path(tempfile.mkdtemp(prefix="orthanc-", dir=memory if memory.is_dir() else folder))
    config.write_text(json.dumps({**configuration(folder, orthanc, plugin, storage), **extra}, indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(orthanc, process, log)
        yield orthanc
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(storage, ignore_errors=True)


def _wait(orthanc: Orthanc, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("Orthanc exited:\n" + log.read_text(errors="replace")[-3000:])
        try:
            orthanc.get("/system")
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError("Orthanc did not answer:\n" + log.read_text(errors="replace")[-3000:])
