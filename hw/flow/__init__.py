"""The build flow: from a gateware top to a bitstream and the numbers the tools report.

``hw/`` holds the gateware (what the chip is: engine, MAC lanes, arithmetic, UART, SLIP, the
board top, PLL, fan-out trees); ``hw/flow/`` holds what is done *to* it to get a chip (how it
is built and measured). The flow imports the gateware, never the other way round.

- :mod:`.boards`: the boards ``hmtx synth`` knows (:data:`~.boards.BOARDS`: platform, FPGA
  family, default config, clock, seeds, nextpnr's names for each resource) and
  :func:`~.boards.board_top`, the top it builds for one. They are here rather than next to
  :class:`~hmtx.hw.board.BoardTop` because a board entry is build knowledge (which amaranth-boards
  platform, which nextpnr cell types, which placement seeds), and ``board_top`` reads it; the
  gateware of the board top (UART bridge, PLL, reset) stays in ``hw/board.py``. The virtual
  board (hmtx.sim.board_sim) builds the same top through ``board_top``.
- :mod:`.synth`: :func:`~.synth.synthesize` and its :class:`~.synth.SynthOptions`, the tool
  environment (:func:`~.synth.tool_env`, handed to each tool's process, never written into
  ``os.environ``), the parsers of the tools' reports and the build report.
- :mod:`.yosys_script`: the Yosys commands of a synthesis (shared with the gate-level
  simulation in hmtx.sim.gatelevel).
- :mod:`.rtlil`: fix-ups of Amaranth's RTLIL before Yosys reads it.
- :mod:`.nextpnr_hook`, :mod:`.netlist`, :mod:`.floorplan`: the passes on the synthesized
  netlist between Yosys and nextpnr (register copies, the LFE5U-85F floorplan).
- :mod:`.hierarchy`: what each module of a design costs.
- :mod:`.reports`: the saved ``hmtx synth`` reports, for the readers of an Fmax.
"""
