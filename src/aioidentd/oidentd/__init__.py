"""Moving a host from oidentd: its system file, NAT file and command line read as
oidentd 2.5 reads them (:mod:`.system_conf`, :mod:`.masq_conf`, :mod:`.flags`), and
turned into one ``aioidentd.toml`` that gives the same answers (:mod:`.convert`, behind
``aioidentd import-oidentd``). Users' own oidentd files are read by the daemon itself
(:mod:`aioidentd.policy.oidentd_conf`)."""

from aioidentd.oidentd.convert import Conversion, OidentdInputError, Problem, convert

__all__ = ["Conversion", "OidentdInputError", "Problem", "convert"]
