"""The broker through the Python `varlink` package, a generic Varlink client
that knows nothing of it: it reads every interface from the broker's
GetInterfaceDescription, parses it, and calls methods by their IDL.

Usage: python_client.py SOCKET USER GROUP MEMBER
Exits non-zero with a message on the first answer that is not as expected.
"""

import sys

import varlink


def fail(message):
    print(f"python varlink client: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    socket, user, group, member = sys.argv[1:5]
    service = "io.userdb.Broker"
    with varlink.Client(address=f"unix:{socket}") as client:
        info = client.get_interfaces()
        for name in ("org.varlink.service", "io.systemd.UserDatabase", "io.userdb.Broker"):
            if name not in info:
                fail(f"GetInfo does not list {name}: {info}")
            # Parsing the description is what open() does; a bad IDL raises.
            client.get_interface(name)
        with client.open("io.systemd.UserDatabase") as db:
            reply = db.GetUserRecord(userName=user, service=service)
            if reply["record"]["userName"] != user:
                fail(f"GetUserRecord({user}) answered {reply}")
            reply = db.GetGroupRecord(groupName=group, service=service)
            if member not in reply["record"].get("members", []):
                fail(f"GetGroupRecord({group}) lacks {member}: {reply}")
            names = [r["record"]["userName"] for r in db.GetUserRecord(service=service, _more=True)]
            if user not in names:
                fail(f"the listing lacks {user}: {names}")
            try:
                db.GetUserRecord(userName="no-such-user", service=service)
                fail("a missing user was found")
            except varlink.VarlinkError as e:
                if e.error() != "io.systemd.UserDatabase.NoRecordFound":
                    fail(f"a missing user gave {e.error()}")
            try:
                db.GetUserRecord(userName=user, service="io.systemd.Multiplexer")
                fail("a call for another service was answered")
            except varlink.VarlinkError as e:
                if e.error() != "io.systemd.UserDatabase.BadService":
                    fail(f"another service gave {e.error()}")
        with client.open("io.userdb.Broker") as broker:
            status = broker.GetStatus()
            if not status["version"] or status["generation"] < 1:
                fail(f"GetStatus answered {status}")
    print(f"python varlink client: {len(names)} users listed, {user} and {group} as expected")


main()
