"""Limits shared by the API's models, the settings, the services and the tools."""

#: Most rows and longest statement timeout one SQL call may ask for (the server's settings
#: choose the defaults, up to these).
MAX_SQL_ROWS = 10_000
MAX_SQL_TIMEOUT_SECONDS = 3600
