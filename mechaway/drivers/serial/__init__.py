"""Serial driver: the bridge protocol (``protocol``) and, on top, the ``[serial.NAME]``
connections. Importing this package imports no serial library."""
