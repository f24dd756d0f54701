"""The units of the sequential engine (:class:`hmtx.hw.serial_engine.SerialEngine`): its
sequencer, the one multiply-accumulate and requantize unit they share, and one unit per stage of
an operation (projection, the query row, scores, softmax, weighted sums)."""
