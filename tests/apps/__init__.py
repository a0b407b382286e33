"""Small app modules that tests load with ``query.app.load_app``."""
