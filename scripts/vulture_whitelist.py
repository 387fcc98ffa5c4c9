"""Names vulture cannot see used (`vulture src scripts/vulture_whitelist.py`, in the test
command): each group says who uses them. Reviewed; a new entry needs its reason."""

# ruff: noqa

# Protocol callbacks: the event loop calls them.
_.connection_made
_.eof_received
_.pause_writing
_.resume_writing

# httptools (llhttp) parser callbacks, found by name.
_.on_body
_.on_header
_.on_url
on_body
on_header

# pydantic: the model configuration and a model validator it runs.
_._one_given
model_config

# logging: a record's time for formatters; module switches that skip work per record.
_._srcfile
_.asctime
_.logMultiprocessing
_.logProcesses
_.logThreads

# argparse reads it.
_.formatter_class

# pydicom data set elements the demo writes into its files.
_.BitsAllocated
_.BitsStored
_.Columns
_.HighBit
_.InstanceNumber
_.InstitutionName
_.MediaStorageSOPClassUID
_.MediaStorageSOPInstanceUID
_.Modality
_.PatientID
_.PatientName
_.PhotometricInterpretation
_.PixelData
_.PixelRepresentation
_.Rows
_.SamplesPerPixel
_.SeriesInstanceUID
_.StudyDate
_.TransferSyntaxUID

# The standard's and the configuration's vocabulary: enum members decoded or parsed by
# value, never named in code.
ATTRIBUTE_IDENTIFIER_LIST
COOKIE
C_ECHO_RSP
C_GET_RSP
C_MOVE_RSP
C_STORE_RSP
DATA_SET_DOES_NOT_MATCH_SOP_CLASS
DUPLICATE_INVOCATION
N_ACTION_RSP
N_CREATE_RQ
N_CREATE_RSP
N_DELETE_RQ
N_DELETE_RSP
N_EVENT_REPORT_RSP
N_GET_RQ
N_GET_RSP
N_SET_RQ
N_SET_RSP
OFFENDING_ELEMENT
PASS
ROUTE
UNRECOGNIZED_PDU_PARAMETER
USER_REJECTION

# Read by tests and the bench: what a scanner still needs, whether an assembler waits for a
# data set, one user-information item, the spool's group commits.
_.batches
_.bytes_needed_hint
_.expecting_data
_.raw_item
bytes_needed_hint

# Spool index columns, named by the row type that reads a whole row.
delivered_at
updated_at

# Keeps a reference to the release task so it is not collected while it runs.
_._releasing
