"""Presentation contexts a backend refuses, through dicomlb: a DCMTK storescp that takes only
CT images in uncompressed syntaxes (an association profile), and Orthanc, behind dicomlb.

When the association's AE titles and address decide its pool, dicomlb asks that pool's
backends about the client's contexts before it answers, and refuses what every one refuses
as they would: result 3 (abstract syntax not supported) or 4 (transfer syntaxes not
supported). When several pools could serve it, it answers from what it learned so far; a
context it accepted and the backend then refuses gets that refusal as the message's status
(0x0122 SOP class not supported), never "no healthy backend", and the backend stays up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    Verification,
)

from tests.dicomdata import make_small, write_series
from tests.peers import (
    LOOPBACK,
    Orthanc,
    StoreSCP,
    dataset_bytes,
    have_dcmtk,
    have_orthanc,
    run_dcmtk,
    sop_instance_uid,
)

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK (apt-get install dcmtk)")

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
SOP_CLASS_NOT_SUPPORTED = 0x0122
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A DCMTK association profile: CT images and verification, uncompressed only.
PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[CtOnly]
PresentationContext1 = CTImageStorage\\Uncompressed
PresentationContext2 = VerificationSOPClass\\Uncompressed

[[Profiles]]
[CtOnly]
PresentationContexts = CtOnly
"""


@pytest.fixture
def ct_only(tmp_path: Path) -> Iterator[StoreSCP]:
    config = tmp_path / "ct-only.cfg"
    config.write_text(PROFILE)
    with StoreSCP("CTONLY", tmp_path / "in", profile=(config, "CtOnly"), fork=True) as scp:
        scp.start()
        yield scp


def pool_config(*backends: tuple[str, StoreSCP], **routes: Any) -> dict[str, Any]:
    return {
        "pools": {
            "p": {
                # one counted failure would take a backend down: it must never be counted
                "health": {"interval": "0.2s", "timeout": "2s", "fall": 1, "rise": 1},
                "backends": [{"name": name, "dicom": scp.address} for name, scp in backends],
            }
        },
        "routes": [{"name": "all", "pool": "p"}],
        **routes,
    }


def instance(
    tmp_path: Path, sop_class: str, syntax: str = EXPLICIT, *, modality: str | None = None
) -> Path:
    """A small `sop_class` ("CT", "MR") instance whose file meta names `syntax` (its bytes are
    relayed untouched); `modality` overrides its Modality."""
    extra = {"Modality": modality} if modality is not None else None
    (ds,) = make_small(1, sop_class, pixels=False, extra=extra)
    path = write_series([ds], tmp_path / f"{sop_class}-{ds.SOPInstanceUID}")[0]
    if syntax != EXPLICIT:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        ds.save_as(path, enforce_file_format=False)
    return path


def associate(
    port: int, contexts: list[tuple[str, list[str]]], aet: str = "MODALITY"
) -> Association:
    ae = AE(ae_title=aet)
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes or [IMPLICIT])
    assoc = ae.associate(LOOPBACK, port, ae_title="DICOMLB")
    assert assoc.is_established
    return assoc


def refusals(assoc: Association) -> dict[str, int]:
    """Abstract syntax -> the result of its refused context."""
    return {str(cx.abstract_syntax): cx.result or 0 for cx in assoc.rejected_contexts}


def store(assoc: Association, path: Path) -> int:
    status = assoc.send_c_store(path)
    return int(status.Status)


def assert_healthy(lb: Any, caplog: pytest.LogCaptureFixture, *names: str) -> None:
    time.sleep(0.5)  # health checks ran since
    for name in names:
        assert lb.backend(name).health.up, name
    for word in ("backend.unreachable", "backend.down", "no healthy backend"):
        assert word not in caplog.text


def asked(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("contexts.asked")]


def test_a_sop_class_the_backend_refuses(
    tmp_path: Path, balancer: Any, ct_only: StoreSCP, caplog: pytest.LogCaptureFixture
) -> None:
    lb = balancer(pool_config(("pacs", ct_only)))
    with caplog.at_level(logging.INFO, logger="dicomlb"):
        # The backend is asked first: even the first association is answered as it would.
        assoc = associate(lb.port, [(MRImageStorage, [EXPLICIT]), (CTImageStorage, [EXPLICIT])])
        assert refusals(assoc) == {MRImageStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}
        assert store(assoc, instance(tmp_path, "CT")) == 0x0000
        assoc.release()
        assert len(ct_only.wait_files(1)) == 1
        assert asked(caplog) == [
            "contexts.asked backend=pacs calling_aet=MODALITY called_aet=CTONLY proposed=2 "
            "refused=1"
        ]
        # Known now: not asked again.
        assoc = associate(lb.port, [(MRImageStorage, [EXPLICIT]), (Verification, [])])
        assert refusals(assoc) == {MRImageStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}
        assoc.release()
        assert len(asked(caplog)) == 1
        # Per calling AE title: another sender's contexts are asked for that sender.
        assoc = associate(lb.port, [(MRImageStorage, [EXPLICIT]), (Verification, [])], "OTHER")
        assert refusals(assoc) == {MRImageStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}
        assoc.release()
        assert len(asked(caplog)) == 2
        assert_healthy(lb, caplog, "pacs")


def test_a_transfer_syntax_the_backend_refuses(
    tmp_path: Path, balancer: Any, ct_only: StoreSCP, caplog: pytest.LogCaptureFixture
) -> None:
    lb = balancer(pool_config(("pacs", ct_only)))
    with caplog.at_level(logging.INFO, logger="dicomlb"):
        # That syntax alone is refused (result 4) ...
        assoc = associate(lb.port, [(CTImageStorage, [JPEG_LOSSLESS_SV1]), (Verification, [])])
        assert refusals(assoc) == {CTImageStorage: TRANSFER_SYNTAXES_NOT_SUPPORTED}
        assoc.release()
        # ... and among others the next one the client proposes is taken.
        assoc = associate(lb.port, [(CTImageStorage, [JPEG_LOSSLESS_SV1, IMPLICIT, EXPLICIT])])
        assert refusals(assoc) == {}
        assert assoc.accepted_contexts[0].transfer_syntax[0] == IMPLICIT
        assert store(assoc, instance(tmp_path, "CT", IMPLICIT)) == 0x0000
        assoc.release()
        assert len(ct_only.wait_files(1)) == 1
        assert_healthy(lb, caplog, "pacs")


def test_a_context_one_backend_of_the_pool_takes_is_accepted(
    tmp_path: Path, balancer: Any, ct_only: StoreSCP, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused only when no candidate backend takes it: the one that does gets the message,
    the one that refused it is skipped without an association."""
    with StoreSCP("ANY", tmp_path / "any", fork=True) as anything:
        anything.start()
        lb = balancer(pool_config(("pacs", ct_only), ("any", anything)))
        with caplog.at_level(logging.DEBUG, logger="dicomlb.services.session"):
            for _ in range(4):  # round robin: pacs is picked, and skipped
                assoc = associate(lb.port, [(MRImageStorage, [EXPLICIT])])
                assert refusals(assoc) == {}
                assert store(assoc, instance(tmp_path, "MR")) == 0x0000
                assoc.release()
            assert len(anything.wait_files(4)) == 4
            declined = [r for r in caplog.records if "cause=context_rejected" in r.getMessage()]
            assert declined and all(r.levelno == logging.DEBUG for r in declined)
            assert_healthy(lb, caplog, "pacs", "any")


def test_the_route_an_association_takes_decides_the_candidates(
    tmp_path: Path, balancer: Any, ct_only: StoreSCP, caplog: pytest.LogCaptureFixture
) -> None:
    with StoreSCP("ANY", tmp_path / "any", fork=True) as anything:
        anything.start()
        config = pool_config(("pacs", ct_only))
        config["pools"]["other"] = {"backends": [{"name": "any", "dicom": anything.address}]}
        config["routes"] = [
            {"name": "ct-room", "match": {"calling_aet": "CT_ROOM"}, "pool": "p"},
            {"name": "mr-by-tag", "match": {"Modality": "MR"}, "pool": "other"},
            {"name": "rest", "pool": "p"},
        ]
        lb = balancer(config)
        with caplog.at_level(logging.INFO, logger="dicomlb"):
            # CT_ROOM: its AE title decides the route, so pacs is asked and refuses.
            contexts = [(MRImageStorage, [EXPLICIT]), (Verification, [])]
            assoc = associate(lb.port, contexts, "CT_ROOM")
            assert refusals(assoc) == {MRImageStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}
            assoc.release()
            # WS: its MR may take the mr-by-tag route or the rest, decided by the data set:
            # not asked, accepted. An MR instance without Modality MR goes to pacs, which
            # refuses it: the message's status, not "no healthy backend".
            assoc = associate(lb.port, [(MRImageStorage, [EXPLICIT])], aet="WS")
            assert refusals(assoc) == {}
            assert store(assoc, instance(tmp_path, "MR", modality="OT")) == SOP_CLASS_NOT_SUPPORTED
            assoc.release()
            assert "backend.declined backend=pacs pool=p cause=context_rejected" in caplog.text
            assert "does not support SOP class 1.2.840.10008.5.1.4.1.1.4" in caplog.text
            # Still accepted for WS: the mr-by-tag route's backend has not refused it.
            assoc = associate(lb.port, [(MRImageStorage, [EXPLICIT])], aet="WS")
            assert refusals(assoc) == {}
            assert store(assoc, instance(tmp_path, "MR")) == 0x0000
            assoc.release()
            assert len(anything.wait_files(1)) == 1
            assert [line.split()[1] for line in asked(caplog)] == ["backend=pacs"]
            assert_healthy(lb, caplog, "pacs", "any")


def test_what_was_learned_is_forgotten_when_the_backend_comes_back(
    tmp_path: Path, balancer: Any, ct_only: StoreSCP, caplog: pytest.LogCaptureFixture
) -> None:
    lb = balancer(pool_config(("pacs", ct_only)))
    contexts = [(MRImageStorage, [EXPLICIT]), (Verification, [])]
    assoc = associate(lb.port, contexts)
    assert refusals(assoc) == {MRImageStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}
    assoc.release()
    # Reconfigured while down: it takes everything now.
    ct_only.stop()
    wait_for(lambda: not lb.backend("pacs").health.up)
    ct_only.profile = None
    ct_only.start()
    wait_for(lambda: lb.backend("pacs").health.up)
    assoc = associate(lb.port, contexts)
    assert refusals(assoc) == {}
    assert store(assoc, instance(tmp_path, "MR")) == 0x0000
    assoc.release()


def test_what_was_learned_is_forgotten_on_reload(
    tmp_path: Path, balancer: Any, ct_only: StoreSCP
) -> None:
    config = pool_config(("pacs", ct_only))
    lb = balancer(config, admin=True, config_file=tmp_path / "lb.yaml")
    contexts = [(MRImageStorage, [EXPLICIT]), (Verification, [])]
    assoc = associate(lb.port, contexts)
    assert refusals(assoc) == {MRImageStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}
    assoc.release()
    ct_only.stop()  # reconfigured behind dicomlb's back, and back before a check noticed
    ct_only.profile = None
    ct_only.start()
    status, body = lb.http("POST", "/api/v1/reload")
    assert status == 200, body
    assoc = associate(lb.port, contexts)
    assert refusals(assoc) == {}
    assoc.release()


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- Orthanc: the syntaxes it takes pass, the ones it refuses are refused -------------------

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"  # unknown to Orthanc 1.10's DCMTK 3.6.7


def compressed(tmp_path: Path, tool: str, option: str) -> Path:
    """A small CT image compressed by a DCMTK tool (`dcmcjpeg +el`: JPEG lossless process
    14, `+es`: spectral selection, `+ep`: full progression; `dcmcrle`: RLE)."""
    (ds,) = make_small(1, "CT")
    source = write_series([ds], tmp_path / "source")[0]
    target = tmp_path / f"{tool}{option}.dcm"
    result = run_dcmtk(tool, [*([option] if option else []), str(source), str(target)])
    assert result.returncode == 0, result.stderr
    return target


@pytest.mark.orthanc
@pytest.mark.skipif(not have_orthanc(), reason="needs orthanc")
def test_orthanc_gets_what_it_takes_and_refuses_what_it_does_not(
    tmp_path: Path, balancer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with Orthanc("ORTHANC") as orthanc:
        orthanc.start()
        lb = balancer(
            {
                "pools": {
                    "p": {
                        "health": {"interval": "0.2s", "timeout": "2s", "fall": 1, "rise": 1},
                        "backends": [{"name": "orthanc", "dicom": orthanc.address}],
                    }
                },
                "routes": [{"name": "all", "pool": "p"}],
            }
        )
        files = [
            compressed(tmp_path, "dcmcjpeg", "+el"),
            compressed(tmp_path, "dcmcjpeg", "+es"),
            compressed(tmp_path, "dcmcjpeg", "+ep"),
            compressed(tmp_path, "dcmcrle", ""),
        ]
        syntaxes = [str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in files]
        # JPEG lossless process 14, the retired spectral selection (6/8) and full
        # progression (10/12) processes dicomlb's fixed list used to refuse, RLE
        assert syntaxes == [
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.53",
            "1.2.840.10008.1.2.4.55",
            "1.2.840.10008.1.2.5",
        ]
        with caplog.at_level(logging.INFO, logger="dicomlb"):
            for path, syntax in zip(files, syntaxes, strict=True):
                assoc = associate(lb.port, [(CTImageStorage, [syntax])])
                assert refusals(assoc) == {}
                assert store(assoc, path) == 0x0000, syntax
                assoc.release()
                instance_id = orthanc.find_sop(sop_instance_uid(path))
                assert instance_id is not None, syntax
                assert orthanc.instance_dataset_bytes(instance_id) == dataset_bytes(path)
            # HTJ2K: Orthanc refuses it (result 3: its DCMTK does not know the syntax), and
            # so does dicomlb at association time, with Orthanc's reason.
            assoc = associate(lb.port, [(CTImageStorage, [HTJ2K_LOSSLESS]), (Verification, [])])
            assert refusals(assoc) == {CTImageStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}
            assoc.release()
            assert_healthy(lb, caplog, "orthanc")
