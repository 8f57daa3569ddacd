"""RADIUS: authentication, accounting and dynamic authorization for the access network."""
