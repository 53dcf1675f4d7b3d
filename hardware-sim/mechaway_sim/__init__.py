"""mechaway-sim: simulated devices for mechaway over the real transports.

``mechaway-sim run SCENARIO`` serves a scenario's devices: Modbus TCP and RTU servers
(pymodbus), serial devices on ptys (the bridge protocol, NMEA), I2C chips and GPIO pins on
a local socket for the daemon's ``sim`` backends, MQTT sensors; a physical model on a
simulated clock drives them, faults on a timeline break them. See docs/simulator.md.
"""

__version__ = "0.1.0"
