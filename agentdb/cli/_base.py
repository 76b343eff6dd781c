"""What the `agentdb` command needs before it knows which subcommand runs: the client's errors,
and the subcommands' help, so `agentdb --help` loads none of them (each loads when called)."""

from __future__ import annotations

#: Exit code of a failed operation, and of a command line agentdb refuses.
FAILED, USAGE = 1, 2

WHERE_TOKENS_COME_FROM = (
    "the admin token `agentdb serve` printed on its first start (or AGENTDB_ADMIN_TOKEN), "
    "a user token from `agentdb users token`, or a session token from `agentdb sessions token`"
)

#: The operator commands' groups, as `agentdb --help` lists them.
HELP = {
    "users": "Users of the platform (admin token). Each owns sessions and gets user tokens.",
    "sessions": "Agent sessions: each has its own PostgreSQL database, checkpoints and branches.",
    "tokens": "Bearer tokens: list them (never their secrets) and revoke them. Issue them with "
    "`agentdb users token` and `agentdb sessions token`.",
    "sql": "Run SQL on a session's database, in one transaction, as the session's own role.",
    "checkpoints": "A session's checkpoints: snapshots of its database, kept as a tree. "
    "Restoring one puts the database back in place (same connection URI); later checkpoints "
    "stay.",
    "branches": "A session's dev branches: writable copies (from now or a checkpoint) that expire.",
    "migrations": "Fleet migrations (admin token): SQL applied to many sessions' databases, "
    "canary first, then in waves, each session checkpointed before; halt, resume, cancel, roll "
    "back.",
}


class ClientError(Exception):
    """A failure to report as one line; `exit_code` is 1 (failed operation) or 2 (bad usage)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code
