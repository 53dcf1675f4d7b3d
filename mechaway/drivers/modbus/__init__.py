"""Modbus TCP and RTU (pymodbus 3.x, imported when a connection starts).

``[modbus.NAME]`` sections configure ``ModbusDriver`` connections; ``decode`` turns
registers into values (pure), ``profiles`` ships device register maps as data files.
"""

from mechaway.drivers.modbus.decode import ReadSpec, encode, plan
from mechaway.drivers.modbus.driver import (
    ModbusBadReply,
    ModbusDriver,
    ModbusError,
    ModbusExceptionReply,
    ModbusSettings,
    ModbusTimeout,
)

__all__ = [
    "ModbusBadReply",
    "ModbusDriver",
    "ModbusError",
    "ModbusExceptionReply",
    "ModbusSettings",
    "ModbusTimeout",
    "ReadSpec",
    "encode",
    "plan",
]
