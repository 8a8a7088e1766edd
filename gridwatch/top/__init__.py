"""The top floor: the command line, the composition of central and demo, the installer CLI, the
probe and the simulator. It may import every role; nothing imports it."""
