#!/usr/bin/env python3
"""An SMTP server that refuses every login, for canaryd's email tests.

It uses aiosmtpd's Controller (Debian bookworm ships aiosmtpd 1.4.x) with
AUTH offered over plain text (auth_require_tls=False, so no certificate is
needed) and an authenticator that always answers "535 5.7.8 Authentication
credentials invalid". Mail is never accepted: AUTH fails first.

Usage: smtpd_auth.py --host 127.0.0.1 --port PORT

Prints "ready HOST:PORT" on stdout once it listens, and runs until it is
killed (SIGTERM or SIGINT stop it cleanly; SIGKILL works too).
"""

import argparse
import logging
import signal
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class RefuseEverything:
    """Handler: would accept mail, but no client gets past AUTH."""

    async def handle_DATA(self, server, session, envelope):
        return "554 5.7.1 authentication required"


def refuse(server, session, envelope, mechanism, auth_data):
    # handled=False and no message: aiosmtpd answers
    # "535 5.7.8 Authentication credentials invalid".
    return AuthResult(success=False, handled=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    # AUTH over plain text is the point here; silence aiosmtpd's warning.
    warnings.simplefilter("ignore")
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    controller = Controller(
        RefuseEverything(),
        hostname=args.host,
        port=args.port,
        auth_require_tls=False,
        auth_required=True,
        authenticator=refuse,
    )
    controller.start()
    print(f"ready {args.host}:{args.port}", flush=True)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
