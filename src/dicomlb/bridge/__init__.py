"""The DICOM -> HTTP bridge (issue #7): C-STOREs routed to backends reachable over HTTP only
are sent as Orthanc REST uploads (`POST /instances`) or DICOMweb STOW-RS requests.

`core.py` is pure (URLs, Part-10 prefix, multipart framing, HTTP answer -> DIMSE status);
`client.py` is the asyncio shell (keep-alive pool per backend); `dicomlb.config.bridge` the
YAML part.
"""
