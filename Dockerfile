# dicomlb as a container image.
#
#   docker build -t dicomlb .
#   docker run -v ./lb.yaml:/etc/dicomlb/dicomlb.yaml:ro -v dicomlb-data:/var/lib/dicomlb \
#     -p 11112:11112 -p 8042:8042 -p 8404:8404 dicomlb
#
# BASE is any Debian-like image with python3 (3.11+) and its venv module. PIP_OPTIONS and
# INSTALL let a build without PyPI install from a local wheelhouse in the build context:
#   --build-arg PIP_OPTIONS="--no-index --find-links /src/wheels" --build-arg INSTALL=dicomlb
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG PIP_OPTIONS=""
ARG INSTALL=/src

COPY . /src
RUN python3 -m venv /opt/dicomlb \
 && /opt/dicomlb/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_OPTIONS} ${INSTALL} \
 && rm -rf /src \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/dicomlb --shell /usr/sbin/nologin dicomlb \
 && mkdir -p /etc/dicomlb /var/lib/dicomlb/spool /var/lib/dicomlb/state \
 && chown -R dicomlb:dicomlb /var/lib/dicomlb

ENV PATH=/opt/dicomlb/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DICOMLB_ADMIN_URL=http://127.0.0.1:8404
USER 10001:10001
WORKDIR /var/lib/dicomlb
# The spool and the learned state (spool.directory, state_dir in the config) live here.
VOLUME ["/var/lib/dicomlb"]
# DICOM, HTTP, admin (dashboard, API, /metrics, /healthz, /readyz): the config decides
# which listen; these are the documented defaults.
EXPOSE 11112 8042 8404

# Ready = this instance takes traffic now (listeners up, a backend or spool room per route).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['DICOMLB_ADMIN_URL'] + '/readyz', timeout=2)"]

CMD ["dicomlb", "run", "-c", "/etc/dicomlb/dicomlb.yaml"]
