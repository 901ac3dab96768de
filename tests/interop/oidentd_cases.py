"""The oidentd configurations of the differential matrix (``netns_oidentd_matrix.py``,
``test_oidentd_matrix.py``): system files, flags, the local users with their own files,
and the connections every case is asked about.

Sources of the configurations: Debian's shipped ``/etc/oidentd.conf`` (every capability
denied, written here in our words), the examples of oidentd.conf(5) and of oidentd's
book (``ryan``), what ZNC's and The Lounge's documentation tell administrators to add
(``allow spoof`` and ``allow spoof_all`` for the bouncer's user), and one case per
capability, range form and force kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Local users that exist only inside the test's mount namespace (a passwd file of its
#: own is mounted over /etc/passwd), with their uids. ``nopw`` below has no entry.
USERS: Final = {
    "alice": 64101,
    "bob": 64102,
    "carol": 64103,
    "dave": 64104,
    "ryan": 64105,
    "znc": 64106,
    "thelounge": 64107,
    "lisa": 64108,
}
#: A uid with no passwd entry (a process of a deleted user, a container's uid).
NO_PASSWD_UID: Final = 64999

SERVER_A, SERVER_B = "127.0.0.2", "127.0.0.3"
CLIENT, VHOST = "127.0.0.1", "127.0.0.10"


@dataclass(frozen=True, slots=True)
class Connection:
    """A connection from this host (``local``, the user's end) to a server."""

    owner: str  #: a name of USERS, "root" or "nopw"
    local: str
    lport: int
    remote: str
    fport: int

    @property
    def uid(self) -> int:
        if self.owner == "root":
            return 0
        if self.owner == "nopw":
            return NO_PASSWD_UID
        return USERS[self.owner]

    def label(self) -> str:
        return f"{self.owner} {self.local}:{self.lport}->{self.remote}:{self.fport}"


def _connections() -> list[Connection]:
    shapes = [
        (CLIENT, SERVER_A, 6667),
        (CLIENT, SERVER_A, 6697),
        (CLIENT, SERVER_B, 7000),
        (CLIENT, SERVER_A, 25),  # a privileged remote port (SMTP)
        (VHOST, SERVER_A, 6667),  # from a second local address ('from' filters)
    ]
    found: list[Connection] = []
    for number, user in enumerate(USERS):
        for index, (local, remote, fport) in enumerate(shapes):
            found.append(Connection(user, local, 41000 + number * 10 + index, remote, fport))
    found.append(Connection("alice", "::1", 41900, "::1", 6667))
    found.append(Connection("carol", "::1", 41901, "::1", 6667))
    found.append(Connection("root", CLIENT, 700, SERVER_A, 6667))
    found.append(Connection("root", CLIENT, 41910, SERVER_A, 25))
    found.append(Connection("nopw", CLIENT, 41920, SERVER_A, 6667))
    return found


CONNECTIONS: Final = _connections()


def port_of(owner: str, fport: int, local: str = CLIENT) -> int:
    return next(
        c.lport for c in CONNECTIONS if (c.owner, c.fport, c.local) == (owner, fport, local)
    )


#: Each user's own oidentd file (~/.oidentd.conf), the same in every case; carol and the
#: others not listed have none.
USER_FILES: Final = {
    "alice": 'global { reply "wonder" }\n'
    'fport 6697 { reply "carol" }\n'  # another user's name: needs spoof_all
    'fport 25 { reply "alicemail" }\n',  # a privileged port: needs spoof_privport
    "bob": 'global { hide }\nfport 7000 { reply "bobby" }\n',
    # The last block that matches wins in oidentd, global included.
    "dave": "fport 7000 { random_numeric }\nglobal { random }\nfport 6697 { numeric }\n",
    # oidentd's book: random by default, a Greek letter for IRC ports.
    "ryan": 'global { random }\nfport 6667:6697 { reply "alpha" "beta" "gamma" }\n',
    # ZNC's identfile module, its default format.
    "znc": 'global { reply "zncident" }\n',
    # The Lounge: one line per connection, the 4.4 form and the older one.
    "thelounge": (
        f"to {SERVER_A} fport 6697 from {CLIENT} lport {port_of('thelounge', 6697)} "
        f'{{ reply "lounger" }}\n'
        f'fport 6667 lport {port_of("thelounge", 6667)} {{ reply "lounge2" }}\n'
    ),
    "lisa": 'global { reply "lisafile" }\n',
}
#: Answers drawn from a list: any of them is the same answer.
REPLY_LISTS: Final = (frozenset({"alpha", "beta", "gamma"}),)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    source: str
    system: str
    flags: str = ""


DEBIAN_DEFAULT: Final = """\
# As Debian ships it: a default for every user, no capability granted.
default {
\tdefault {
\t\tdeny spoof
\t\tdeny spoof_all
\t\tdeny spoof_privport
\t\tdeny random
\t\tdeny random_numeric
\t\tdeny numeric
\t\tdeny hide
\t\tdeny forward
\t}
}
"""

#: What Debian's oidentd.service runs with its shipped /etc/default/oidentd
#: (OIDENT_OPTIONS="-mf -l 10", OIDENT_USER and OIDENT_GROUP oident): ``oidentd -S
#: ${OIDENT_OPTIONS} -u ${OIDENT_USER} -g ${OIDENT_GROUP}``, and ``-P`` with the default
#: router when OIDENT_BEHIND_PROXY=yes and there is one (the test's namespace has none).
DEBIAN_FLAGS: Final = "-S -mf -l 10 -u oident -g oident"
#: The variables of Debian's /etc/default/oidentd that DEBIAN_FLAGS comes from.
DEBIAN_DEFAULTS: Final = {
    "OIDENT_OPTIONS": "-mf -l 10",
    "OIDENT_USER": "oident",
    "OIDENT_GROUP": "oident",
    "OIDENT_BEHIND_PROXY": "yes",
}

CASES: Final = (
    Case(
        "debian-default",
        "Debian's /etc/oidentd.conf, run as its oidentd.service runs it with its "
        "/etc/default/oidentd (no default route here, so no -P)",
        DEBIAN_DEFAULT,
        DEBIAN_FLAGS,
    ),
    Case("empty", "an empty file: oidentd's built-in defaults", ""),
    Case(
        "man-spoof-except-6667",
        "oidentd.conf(5), first example",
        "default {\n\tdefault {\n\t\tallow spoof\n\t}\n\n\tfport 6667 {\n\t\tdeny spoof\n"
        "\t\tallow hide\n\t}\n}\n",
    ),
    Case(
        "man-root-lisa",
        'oidentd.conf(5): hide root; lisa forced to "me" on local ports 1024 and up',
        'default {\n\tdefault {\n\t\tallow spoof\n\t}\n}\n\nuser "root" {\n\tdefault {\n'
        '\t\tforce hide\n\t}\n}\n\nuser "lisa" {\n\tlport 1024: {\n\t\tforce reply "me"\n'
        "\t}\n}\n",
    ),
    Case(
        "book-ryan",
        "oidentd's book: hide everyone, ryan may spoof and use random, not to one host",
        "default {\n\tdefault {\n\t\tforce hide\n\t}\n}\n\nuser ryan {\n\tdefault {\n"
        f'\t\tallow spoof\n\t\tallow random\n\t}}\n\n\tto {SERVER_B} {{\n\t\tforce reply "ryan"\n'
        "\t}\n}\n",
    ),
    Case(
        "znc-docs",
        "ZNC's and oidentd's ZNC guide: allow spoof and spoof_all for the ZNC user",
        'user "znc" {\n\tdefault {\n\t\tallow spoof\n\t\tallow spoof_all\n\t}\n}\n',
        "-S",
    ),
    Case(
        "thelounge-docs",
        "The Lounge's identd guide: the same for its user, on top of Debian's file",
        DEBIAN_DEFAULT
        + '\nuser "thelounge" {\n\tdefault {\n\t\tallow spoof\n\t\tallow spoof_all\n\t}\n}\n',
    ),
    Case("cap-hide", "allow hide", "default {\n\tdefault {\n\t\tallow hide\n\t}\n}\n"),
    Case(
        "cap-random-numeric",
        "allow random, random_numeric and numeric",
        "default {\n\tdefault {\n\t\tallow random\n\t\tallow random_numeric\n"
        "\t\tallow numeric\n\t}\n}\n",
    ),
    Case(
        "cap-spoof-all-privport",
        "allow spoof, spoof_all and spoof_privport",
        "default {\n\tdefault {\n\t\tallow spoof\n\t\tallow spoof_all\n"
        "\t\tallow spoof_privport\n\t}\n}\n",
    ),
    Case(
        "force-kinds",
        "force random, numeric, random_numeric and reply by remote port",
        "default {\n\tdefault {\n\t\tallow spoof\n\t}\n\tfport 6667 {\n\t\tforce random\n\t}\n"
        "\tfport 6697 {\n\t\tforce numeric\n\t}\n\tfport 7000 {\n\t\tforce random_numeric\n\t}\n"
        '\tfport :1023 {\n\t\tforce reply "low"\n\t}\n}\n',
    ),
    Case(
        "range-forms",
        "to, from, lport MIN:MAX, fport MIN:MAX and a service name, for one user",
        "default {\n\tdefault {\n\t\tallow spoof\n\t}\n}\nuser alice {\n"
        "\tdefault {\n\t\tallow hide\n\t}\n"
        f'\tfport 6660:6697 {{\n\t\tforce reply "wide"\n\t}}\n'
        f'\tfport ircd {{\n\t\tforce reply "narrow"\n\t}}\n'
        f"\tto {SERVER_B} {{\n\t\tforce hide\n\t}}\n"
        f'\tfrom {VHOST} {{\n\t\tforce reply "vhost"\n\t}}\n'
        f"\tlport {port_of('alice', 25)}:{port_of('alice', 25)} {{\n\t\tallow spoof\n"
        "\t\tallow spoof_privport\n\t}\n}\n",
    ),
    Case(
        "flags-e-o",
        "-e (every error as UNKNOWN-ERROR) and -o OTHER, with hide allowed",
        "default {\n\tdefault {\n\t\tallow hide\n\t}\n}\n",
        "-e -oOTHER -i",
    ),
    Case(
        "force-then-allow",
        "a force that a later allow ends (its capability stays granted), inherited",
        "default {\n\tdefault {\n\t\tforce hide\n\t\tallow spoof\n\t}\n}\n"
        "user dave {\n\tdefault {\n\t\tallow random\n\t}\n}\n",
    ),
    Case(
        "order-and-shadows",
        "ranges before a later 'default' range, and two ranges with the same filters",
        'default {\n\tfport 6697 {\n\t\tforce reply "early"\n\t}\n'
        "\tdefault {\n\t\tallow spoof\n\t}\n"
        '\tfport 6660:6670 {\n\t\tforce reply "wide"\n\t}\n'
        '\tfport 6667 {\n\t\tforce reply "first"\n\t}\n'
        '\tfport 6667 {\n\t\tforce reply "second"\n\t}\n}\n',
    ),
    Case(
        "server-flags",
        "-p, -t, -l and -q: how it listens, the same answers",
        "default {\n\tdefault {\n\t\tallow spoof\n\t}\n}\n",
        "-p 113 -t 5 -l 64 -q",
    ),
)
