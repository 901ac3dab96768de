"""The host identd process behind ``aioidentd serve`` (internal: the command line is its
interface).

* :mod:`.daemon`: the life cycle (overrides, privilege drop, signals, reload);
* :mod:`.sockets`: where the sockets come from (bind, systemd, inetd);
* :mod:`.activation`: reading systemd's and inetd's hand-over;
* :mod:`.privileges`: dropping root after binding;
* :mod:`.supervisor`: worker processes;
* :mod:`.responder`: answers from the kernel's socket table through the policy;
* :mod:`.explain`: that answer for one connection with every reason (``explain``);
* :mod:`.metrics`: ``[metrics]``: the Prometheus endpoint, the textfile, SIGUSR1;
* :mod:`.logs`: plain, journal and JSON log lines.
"""

from aioidentd.daemon.daemon import Daemon
from aioidentd.daemon.responder import KernelResponder
from aioidentd.errors import DaemonError

__all__ = ["Daemon", "DaemonError", "KernelResponder"]
