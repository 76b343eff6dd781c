import agentdb.pg


def test_all_lists_exactly_the_public_names():
    public = {name for name in vars(agentdb.pg) if not name.startswith("_")}
    assert set(agentdb.pg.__all__) == public
    assert set(agentdb.pg.__all__) == {
        "DataDirError",
        "EmbeddedPostgres",
        "NotSuperuserError",
        "PortInUseError",
        "PostgresError",
        "PostgresStartError",
        "PostgresSupervisor",
        "ServerHealth",
        "ServerInfo",
        "open_server",
        "probe_server",
    }


def test_errors_form_one_tree():
    assert issubclass(agentdb.pg.PostgresStartError, agentdb.pg.PostgresError)
    for error in (agentdb.pg.DataDirError, agentdb.pg.PortInUseError):
        assert issubclass(error, agentdb.pg.PostgresStartError)
    assert issubclass(agentdb.pg.NotSuperuserError, agentdb.pg.PostgresError)
