//! Lodger's node agent: idle detection, node reporting, checkpoint and signal driver
