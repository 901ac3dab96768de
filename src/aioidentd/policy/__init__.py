"""The host identd's answers: the configuration and the policy that reads it.

* :mod:`.settings`: the schema, one definition per key (what a file may say);
* :mod:`._load` and :mod:`._toml_lines`: reading a file into a frozen :class:`Config`,
  with ``file:line`` errors (internal);
* :mod:`.policy`: deciding the reply for one connection's owner, as an order of steps
  each in its own module (:mod:`.users`, :mod:`.layers`, :mod:`.user_choice`,
  :mod:`.answers`, :mod:`.delegated`; the result :mod:`.decision`, the explain
  :mod:`.trail`);
* :mod:`.userfiles`: reading the files users control (``~/.aioidentd-reply``);
* :mod:`.describe`: the effective policy in words, for ``check-config``.
"""

from aioidentd.errors import ConfigError, ReplyFileRefused
from aioidentd.policy._load import load_config, parse_config
from aioidentd.policy.decision import Decision
from aioidentd.policy.describe import describe
from aioidentd.policy.layers import merge_settings
from aioidentd.policy.policy import Policy
from aioidentd.policy.settings import (
    ANSWER_KINDS,
    BUILTIN_DEFAULT,
    BUILTIN_ROOT,
    AnswerKind,
    AnswerSettings,
    Config,
    DaemonSettings,
    PortRange,
    ReplySettings,
    Rule,
)
from aioidentd.policy.userfiles import REPLY_FILE, read_reply_file
from aioidentd.policy.users import SystemUserDB, UserDB

__all__ = [
    "ANSWER_KINDS",
    "BUILTIN_DEFAULT",
    "BUILTIN_ROOT",
    "REPLY_FILE",
    "AnswerKind",
    "AnswerSettings",
    "Config",
    "ConfigError",
    "DaemonSettings",
    "Decision",
    "Policy",
    "PortRange",
    "ReplyFileRefused",
    "ReplySettings",
    "Rule",
    "SystemUserDB",
    "UserDB",
    "describe",
    "load_config",
    "merge_settings",
    "parse_config",
    "read_reply_file",
]
