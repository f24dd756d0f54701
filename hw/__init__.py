# The engines HmtxTop can be built with (hw/top.py): "lanes", hw/engine.py's P MAC lanes, and
# "serial", hw/serial_engine.py's one time-shared multiplier for the iCE40 UP5K. Named here so
# the command lines can offer the choice without importing (or elaborating) either engine.
ENGINES = ("lanes", "serial")
