"""A dicomlb listener on the in-memory network of `fakenet` for the service tests: a runtime
from a config a user would write, its backends scripted SCPs, one client association at a
time, and the DIMSE requests and data sets the query / retrieve / commitment services take."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomlb.config import build_snapshot
from dicomlb.dicom.acceptor import DicomListener, InboundAssociation
from dicomlb.dicom.dimse import NO_DATA_SET, Command, CommandField, Tag
from dicomlb.dicom.pdu import AssociateAccept, AssociateRequest, RoleSelection, UserInformation
from dicomlb.runtime import Runtime
from dicomlb.services.relay import Relay
from tests.unit.fakenet import FakeClient, Message, Network
from tests.unit.helpers import IMPLICIT_VR_LE, make_request

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5: the well-known instance
CT = "1.2.840.10008.5.1.4.1.1.2"
DATA_SET_PRESENT = 0x0000

# Context IDs the client proposes (all in implicit VR little endian).
FIND_CTX, MOVE_CTX, GET_CTX, CT_CTX, COMMIT_CTX = 1, 3, 5, 7, 9


def backend(name: str, n: int) -> dict[str, Any]:
    """Backend `name` at 10.0.0.`n`:104, AE title its name upper-cased."""
    return {"name": name, "dicom": f"{name.upper()}@10.0.0.{n}:104"}


def site_config(names: Sequence[str] = ("pacs1", "pacs2"), **pool: Any) -> dict[str, Any]:
    """One pool of `names` (health checks off) behind one route; DEST and COMMITSCU known."""
    return {
        "listeners": {"dicom": {"bind": "127.0.0.1:11112", "ae_title": "DICOMLB"}},
        "pools": {
            "pacs": {
                "health": {"enabled": False},
                "backends": [backend(name, i) for i, name in enumerate(names, 1)],
                **pool,
            }
        },
        "routes": [{"name": "all", "pool": "pacs"}],
        "dicom_nodes": {"DEST": "DEST@10.0.0.50:104", "COMMITSCU": "COMMITSCU@10.0.0.60:104"},
    }


def encode(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = True
    write_dataset(out, ds)
    return out.getvalue()


def study_query(study: str = "", **values: str) -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return encode(ds)


def commitment_data(transaction: str, instances: Sequence[str]) -> bytes:
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.ReferencedSOPSequence = []
    for uid in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = CT
        item.ReferencedSOPInstanceUID = uid
        ds.ReferencedSOPSequence.append(item)
    return encode(ds)


def request(field: int, sop_class: str, message_id: int, **extra: int | str) -> Command:
    values: dict[int, int | str | bytes] = {
        Tag.AFFECTED_SOP_CLASS_UID: sop_class,
        Tag.COMMAND_FIELD: field,
        Tag.MESSAGE_ID: message_id,
        Tag.PRIORITY: 0,
        Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
    }
    tags = {"destination": Tag.MOVE_DESTINATION}
    values.update({tags[k]: v for k, v in extra.items()})
    return Command.build(values)


def n_action(message_id: int) -> Command:
    return Command.build(
        {
            Tag.COMMAND_FIELD: CommandField.N_ACTION_RQ,
            Tag.MESSAGE_ID: message_id,
            Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
            Tag.REQUESTED_SOP_CLASS_UID: STORAGE_COMMITMENT,
            Tag.REQUESTED_SOP_INSTANCE_UID: COMMITMENT_INSTANCE,
            Tag.ACTION_TYPE_ID: 1,
        }
    )


def n_event_report(
    message_id: int, event_type: int = 1, sop_class: str = STORAGE_COMMITMENT
) -> Command:
    return Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: sop_class,
            Tag.COMMAND_FIELD: CommandField.N_EVENT_REPORT_RQ,
            Tag.MESSAGE_ID: message_id,
            Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
            Tag.AFFECTED_SOP_INSTANCE_UID: COMMITMENT_INSTANCE,
            Tag.EVENT_TYPE_ID: event_type,
        }
    )


def c_store(message_id: int, sop_instance: str, **extra: int | str) -> Command:
    values: dict[int, int | str | bytes] = {
        Tag.AFFECTED_SOP_CLASS_UID: CT,
        Tag.COMMAND_FIELD: CommandField.C_STORE_RQ,
        Tag.MESSAGE_ID: message_id,
        Tag.PRIORITY: 0,
        Tag.COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
        Tag.AFFECTED_SOP_INSTANCE_UID: sop_instance,
    }
    tags = {
        "originator_ae": Tag.MOVE_ORIGINATOR_AE_TITLE,
        "originator_id": Tag.MOVE_ORIGINATOR_MESSAGE_ID,
    }
    values.update({tags[k]: v for k, v in extra.items()})
    return Command.build(values)


def cancel(message_id: int) -> Command:
    return Command.build(
        {
            Tag.COMMAND_FIELD: CommandField.C_CANCEL_RQ,
            Tag.MESSAGE_ID_BEING_RESPONDED_TO: message_id,
            Tag.COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        }
    )


def client_request(
    calling_ae: str = "CLIENT", called_ae: str = "DICOMLB", *, get_role: bool = False
) -> AssociateRequest:
    """Q/R, CT storage and storage commitment, implicit VR LE; with `get_role` the client
    offers the SCP role for CT (a C-GET client)."""
    base = make_request(
        contexts=[
            (FIND_CTX, STUDY_ROOT_FIND, (IMPLICIT_VR_LE,)),
            (MOVE_CTX, STUDY_ROOT_MOVE, (IMPLICIT_VR_LE,)),
            (GET_CTX, STUDY_ROOT_GET, (IMPLICIT_VR_LE,)),
            (CT_CTX, CT, (IMPLICIT_VR_LE,)),
            (COMMIT_CTX, STORAGE_COMMITMENT, (IMPLICIT_VR_LE,)),
        ],
        called_ae=called_ae,
        calling_ae=calling_ae,
    )
    roles = (RoleSelection(sop_class_uid=CT, scu_role=True, scp_role=True),) if get_role else ()
    info = base.user_info
    return AssociateRequest(
        called_ae=base.called_ae,
        calling_ae=base.calling_ae,
        contexts=base.contexts,
        user_info=UserInformation(
            max_pdu=info.max_pdu,
            implementation_class_uid=info.implementation_class_uid,
            implementation_version_name=info.implementation_version_name,
            roles=roles,
        ),
    )


class Site:
    """A runtime built from `config` whose backends dial `network`, and its listener."""

    def __init__(self, config: dict[str, Any], network: Network) -> None:
        self.network = network
        self.runtime = Runtime(build_snapshot(config, source="<test>"), dial=network.dial)
        self.listener = DicomListener(self.runtime, Relay(None))

    async def client(
        self, calling_ae: str = "CLIENT", called_ae: str = "DICOMLB", *, get_role: bool = False
    ) -> FakeClient:
        """A client association, accepted."""
        client = FakeClient.connect(InboundAssociation(self.listener))
        client.associate(client_request(calling_ae, called_ae, get_role=get_role))
        accept = await client.next()
        assert isinstance(accept, AssociateAccept), accept
        return client

    async def responses(self, client: FakeClient, until_final: bool = True) -> list[Message]:
        """The client's responses up to and including the first non-pending one."""
        out = []
        while True:
            message = await client.next_message()
            out.append(message)
            if not until_final or message.command.status not in (0xFF00, 0xFF01):
                return out

    def held(self) -> dict[str, int]:
        """Backend slots leased or opened, and messages counted in flight, per backend."""
        return {
            name: pool.held + self.runtime.backends[name].active
            for name, pool in self.runtime.upstreams.items()
        }
