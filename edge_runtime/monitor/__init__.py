"""On-device monitoring: camera health and tamper (:mod:`.tamper`), run off the inference path by
:mod:`.service`; configured by ``[monitor]`` (:mod:`.config`)."""
