"""The HTTP load balancer: sans-IO HTTP/1.x core (`h1.py`), routes, middlewares, affinity and
Orthanc awareness (pure), and the asyncio shells (`proxy.py`, `upstream.py`, `checks.py`)."""
