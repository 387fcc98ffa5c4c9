"""What dicomlb does with a client's DIMSE messages, one module per service.

- `session.py`: one `Session` per client association: backend placement, upstream
  associations, forwarding, the client's answers.
- `relay.py`: the association's run loop and the `{command field: service}` table.
- `echo.py`, `store.py`, `query.py` (C-FIND), `retrieve.py` (C-MOVE, C-GET, sub-operations),
  `commitment.py` (storage commitment).
"""
