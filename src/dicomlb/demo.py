"""`dicomlb demo`: the balancer with three embedded storage nodes and synthetic studies.

Everything runs in one process on loopback: three StoreSCPs write to a temporary folder,
studies of several modalities are sent through dicomlb by a pynetdicom client, and the
summary says where each study went.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicomlb.app import App
from dicomlb.config import build_snapshot
from dicomlb.dicom.store_scp import StoreSCP

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}
STUDIES = [("CT", 12), ("CT", 8), ("MR", 10), ("PT", 6), ("CR", 2), ("US", 4), ("MR", 5)]
NODES = ("node-a", "node-b", "node-c")
TRICKLE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class SentStudy:
    modality: str
    study_uid: str
    calling_aet: str
    statuses: tuple[int, ...]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_config(port: int, node_ports: dict[str, int], admin_port: int = 0) -> dict[str, Any]:
    """The demo's configuration, as a user would write it in YAML."""

    def backend(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "dicom": f"{name.upper().replace('-', '')}@127.0.0.1:{node_ports[name]}",
        }

    return {
        "listeners": {
            "dicom": {"bind": f"127.0.0.1:{port}", "ae_title": "DICOMLB"},
            "admin": {"bind": f"127.0.0.1:{admin_port or free_port()}"},
        },
        "pools": {
            "imaging": {
                "strategy": "affinity",
                "key": "StudyInstanceUID",
                "health": {"interval": "2s", "timeout": "1s", "fall": 2, "rise": 2},
                "backends": [backend("node-a"), backend("node-b")],
            },
            "general": {"strategy": "round_robin", "backends": [backend("node-c")]},
        },
        "routes": [
            {
                "name": "cross-sectional",
                "match": {"Modality": ["CT", "MR", "PT"]},
                "pool": "imaging",
            },
            {"name": "default", "pool": "general"},
        ],
    }


def make_study(modality: str, count: int, index: int) -> list[Dataset]:
    """A small synthetic study: `count` 64x64 16-bit images of one modality."""
    study_uid, series_uid = generate_uid(), generate_uid()
    pixels = bytes(range(256)) * 32
    datasets = []
    for number in range(1, count + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = SOP_CLASSES[modality]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName = f"DEMO^PATIENT{index}"
        ds.PatientID = f"DEMO{index:03d}"
        ds.Modality = modality
        ds.InstitutionName = "dicomlb demo hospital"
        ds.StudyDate = "20261121"
        ds.InstanceNumber = number
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = pixels
        datasets.append(ds)
    return datasets


def send_study(port: int, modality: str, datasets: list[Dataset]) -> SentStudy:
    """Send one study over one association (blocking; pynetdicom as the modality)."""
    calling = f"{modality}_SCANNER"
    ae = AE(ae_title=calling)
    ae.add_requested_context(SOP_CLASSES[modality], ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMLB")
    statuses = []
    if assoc.is_established:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else 0xFFFF)
        assoc.release()
    else:
        statuses = [0xFFFF] * len(datasets)
    return SentStudy(modality, datasets[0].StudyInstanceUID, calling, tuple(statuses))


def where_studies_are(root: Path) -> dict[str, collections.Counter[str]]:
    """Study Instance UID -> {node: instances} from the nodes' folders."""
    found: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for node in NODES:
        for path in (root / node).glob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            found[str(ds.StudyInstanceUID)][node] += 1
    return found


def summary(sent: list[SentStudy], root: Path) -> str:
    """A table: each study, what the sender saw, and where its instances landed."""
    placed = where_studies_are(root)
    lines = [
        f"{'modality':<9}{'calling AE':<13}{'study':<14}{'sent':>5}{'ok':>5}  landed on",
        "-" * 64,
    ]
    for study in sent:
        ok = sum(1 for s in study.statuses if s == 0)
        nodes = ", ".join(f"{n} ({c})" for n, c in sorted(placed.get(study.study_uid, {}).items()))
        lines.append(
            f"{study.modality:<9}{study.calling_aet:<13}…{study.study_uid[-12:]:<13}"
            f"{len(study.statuses):>5}{ok:>5}  {nodes or 'nowhere'}"
        )
    split = [s.study_uid for s in sent if len(placed.get(s.study_uid, {})) > 1]
    lines.append("-" * 64)
    lines.append(
        "studies split across nodes: "
        + (", ".join(split) if split else "none (affinity keeps each study on one node)")
    )
    lines.append(f"instances are in {root}/<node>/")
    return "\n".join(lines)


async def run_demo(
    report: Callable[[str], None],
    *,
    keep_running: bool,
    port: int = 0,
    admin_port: int = 0,
    workdir: Path | None = None,
) -> None:
    """Run the demo and `report` its summary; with `keep_running`, serve until SIGINT/SIGTERM."""
    root = workdir or Path(tempfile.mkdtemp(prefix="dicomlb-demo-"))
    nodes = {name: StoreSCP(name.upper().replace("-", ""), root / name) for name in NODES}
    node_ports = {name: await scp.start() for name, scp in nodes.items()}
    port = port or free_port()
    app = App(build_snapshot(demo_config(port, node_ports, admin_port), source="<demo>"))
    await app.start()
    assert app.admin is not None
    report(f"dashboard: {app.admin.url} (metrics: {app.admin.url}metrics)")
    try:
        sent = []
        for index, (modality, count) in enumerate(STUDIES, start=1):
            datasets = make_study(modality, count, index)
            sent.append(await asyncio.to_thread(send_study, port, modality, datasets))
        report(summary(sent, root))
        if keep_running:
            report(
                f"dicomlb is listening on 127.0.0.1:{port} (AE DICOMLB), dashboard on "
                f"{app.admin.url}; a new study every {TRICKLE_SECONDS:g}s; Ctrl-C stops it."
            )
            trickle = asyncio.get_running_loop().create_task(_trickle(port))
            try:
                await _until_signal()
            finally:
                trickle.cancel()
    finally:
        await app.stop()
        for scp in nodes.values():
            await scp.stop()


async def _trickle(port: int) -> None:
    """Keep images flowing for the dashboard: one small study after another, forever."""
    for index in itertools.count(len(STUDIES) + 1):
        modality, count = STUDIES[index % len(STUDIES)]
        await asyncio.to_thread(send_study, port, modality, make_study(modality, count, index))
        await asyncio.sleep(TRICKLE_SECONDS)


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
