"""The container's HEALTHCHECK: ask ``/healthz`` on ``status.listen``, with the token if set.

``python -m ingestd.observe.healthcheck`` exits 0 when the daemon answers 200 and 1
otherwise, as Docker wants. It reads the same configuration as the daemon
(``$INGESTD_CONFIG``), so another port or a token (``status.token_file`` or the
credential ``status-token``) needs no change to the image.
"""

from __future__ import annotations

import http.client
import os
import sys

from ingestd.config.credentials import config_path_from, resolve_status_token
from ingestd.config.load import load_config
from ingestd.errors import IngestdError

TIMEOUT = 4.0
# A wildcard listen address is reached through loopback from inside the container.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def main() -> int:
    try:
        config = load_config(config_path_from(None, os.environ))
        token = resolve_status_token(config.status, os.environ)
    except IngestdError as exc:
        print(f"ingestd healthcheck: {exc}", file=sys.stderr)
        return 1
    if config.status.listen is None:
        print("ingestd healthcheck: status.listen is null, nothing to ask", file=sys.stderr)
        return 1
    host, port = config.status.listen
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection = http.client.HTTPConnection(_WILDCARDS.get(host, host), port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/healthz", headers=headers)
        status = connection.getresponse().status
    except OSError as exc:
        print(f"ingestd healthcheck: {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if status != 200:
        print(f"ingestd healthcheck: /healthz answered {status}", file=sys.stderr)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
